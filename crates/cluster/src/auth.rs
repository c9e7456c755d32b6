//! The shared job token: loading it, attaching it to calls, checking it.
//!
//! The token is a secret shared by the coordinator and every worker. It
//! comes from a file or an environment variable, never a command-line
//! literal (which other users can read in the process list).

use std::path::Path;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::{Error, Result};

/// Loads the job token from `file` if given, else from the environment
/// variable `env_var`. Surrounding whitespace is trimmed; an empty token is
/// an error. A file readable by group or others is used but warned about.
pub fn load_token(file: Option<&Path>, env_var: &str) -> Result<String> {
    let token = match file {
        Some(path) => {
            warn_if_shared(path);
            std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?
        }
        None => std::env::var(env_var)
            .map_err(|_| Error::Token(format!("no token file given and ${env_var} is not set")))?,
    };
    let token = token.trim();
    if token.is_empty() {
        let from = file.map_or_else(|| format!("${env_var}"), |p| p.display().to_string());
        return Err(Error::Token(format!("{from} is empty")));
    }
    Ok(token.to_string())
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "token file is readable by group or others; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Client side: adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct AddToken(MetadataValue<tonic::metadata::Ascii>);

impl AddToken {
    pub(crate) fn new(token: &str) -> Result<Self> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Token("the token is not printable ASCII".into()))?;
        Ok(Self(value))
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Server side: refuses calls without the right token (constant-time
/// compare), logging who tried.
#[derive(Clone)]
pub(crate) struct CheckToken(std::sync::Arc<Vec<u8>>);

impl CheckToken {
    pub(crate) fn new(token: &str) -> Self {
        Self(std::sync::Arc::new(format!("Bearer {token}").into_bytes()))
    }
}

impl Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get("authorization").map(|v| v.as_bytes());
        let ok = given.is_some_and(|g| bool::from(g.ct_eq(self.0.as_slice())));
        if ok {
            return Ok(req);
        }
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        let what = if given.is_some() { "wrong" } else { "missing" };
        tracing::warn!(%peer, "refused a call with a {what} token");
        Err(Status::unauthenticated(format!("{what} cluster token")))
    }
}
