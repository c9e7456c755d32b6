//! Token authentication, version and config checks, token loading, TLS.

mod common;

use std::time::Duration;

use cluster::{Coordinator, Error, TlsClient, TlsServer, WorkerClient, load_token, proto};
use common::*;

#[test]
fn wrong_token_is_unauthenticated() {
    let coord = coordinator(1);
    let mut opts = client_options(&coord);
    opts.token = "not-the-token".into();
    let err = WorkerClient::connect(opts).err().unwrap();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
}

#[test]
fn missing_token_is_unauthenticated() {
    let coord = coordinator(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let mut raw =
            proto::cluster_client::ClusterClient::connect(format!("http://{}", coord.addr()))
                .await
                .unwrap();
        raw.kv_try_get(proto::KvTryGetRequest { key: "k".into() })
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("missing"), "{}", status.message());
}

#[test]
fn software_version_mismatch_is_refused_naming_both() {
    let coord = coordinator(1);
    let mut opts = client_options(&coord);
    opts.software_version = "0.2.0".into();
    let err = WorkerClient::connect(opts).err().unwrap();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert!(
        err.to_string()
            .contains("worker software version 0.2.0 != coordinator 0.1.0"),
        "{err}"
    );
}

#[test]
fn config_digest_mismatch_is_refused_naming_both() {
    let coord = coordinator(1);
    let mut opts = client_options(&coord);
    opts.config_digest = cluster::config_digest("[model]\nsize = \"2b\"\n");
    let theirs = opts.config_digest.clone();
    let err = WorkerClient::connect(opts).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains(&theirs), "{msg}");
    assert!(msg.contains(&cluster::config_digest(CONFIG)), "{msg}");
}

#[test]
fn token_loads_from_file_or_env_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "  s3cret\n").unwrap();
    assert_eq!(
        load_token(Some(&path), "MESHTRAIN_TEST_UNSET_VAR").unwrap(),
        "s3cret"
    );
    std::fs::write(&path, " \n").unwrap();
    assert!(matches!(load_token(Some(&path), "X"), Err(Error::Token(_))));
    assert!(matches!(
        load_token(None, "MESHTRAIN_TEST_UNSET_VAR"),
        Err(Error::Token(_))
    ));
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("MESHTRAIN_TEST_TOKEN_VAR", "from-env\n") };
    assert_eq!(
        load_token(None, "MESHTRAIN_TEST_TOKEN_VAR").unwrap(),
        "from-env"
    );
}

#[test]
fn tls_round_trip_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let mut opts = options(2);
    opts.tls = Some(TlsServer {
        cert_pem_path: cert_path.clone(),
        key_pem_path: key_path,
    });
    let coord = Coordinator::start(opts).unwrap();
    let tls = TlsClient {
        ca_pem_path: cert_path,
        domain: "localhost".into(),
    };
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut o = client_options(&coord);
            o.tls = Some(tls.clone());
            WorkerClient::connect(o).unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for w in &workers {
            s.spawn(move || {
                w.barrier("tls", Duration::from_secs(10)).unwrap();
                let mut v = vec![1.5f32; 1000];
                w.all_reduce_sum(0, &mut v).unwrap();
                assert!(v.iter().all(|&x| x == 3.0));
            });
        }
    });

    // A plaintext client cannot talk to the TLS coordinator.
    let plain = WorkerClient::connect(client_options(&coord));
    assert!(plain.is_err());
}
