//! Tokenizers trained here: byte fallback, special ids, round trip.

mod common;

#[test]
fn smoke_tokenizer_round_trips_anything() {
    let tok = common::smoke_tokenizer();
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.bos_id()), (0, 1, 2));
    assert_eq!(tok.piece_to_id("<start_of_turn>"), Some(4));
    assert_eq!(tok.piece_to_id("<0x00>"), Some(6));
    assert_eq!(tok.piece_to_id("<0xFF>"), Some(261));
    for text in [
        "ROMEO:\nBut soft, what light through yonder window breaks?",
        "日本語 😀 émigré\t\ttabs   spaces\n\n\nnewlines 0123456789",
        "<bos> is text here, <start_of_turn> is a piece",
        " leading and trailing ",
    ] {
        let ids = tok.encode(text).unwrap();
        assert!(!ids.contains(&2), "the text <bos> is not the control id");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    let ids = tok.encode("日").unwrap();
    assert!(
        ids.iter().all(|&i| (6..262).contains(&i)),
        "byte fallback: {ids:?}"
    );
    assert!(tok.encode("<start_of_turn>").unwrap() == [4]);
    assert!(tok.decode(&[1_000_000]).is_err());
}

#[test]
fn training_is_quick_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, &text[..50_000]).unwrap();
    let a = data::train_bpe(
        std::slice::from_ref(&small),
        1000,
        &dir.path().join("a.json"),
    )
    .unwrap();
    let b = data::train_bpe(&[small], 1000, &dir.path().join("b.json")).unwrap();
    assert!(
        a.vocab_size() <= 1000 && a.vocab_size() > 600,
        "{}",
        a.vocab_size()
    );
    let s = "First Citizen: speak, speak.";
    assert_eq!(a.encode(s).unwrap(), b.encode(s).unwrap());
    assert_eq!(a.decode(&a.encode(s).unwrap()).unwrap(), s);
    let reloaded = data::Tokenizer::from_file(&dir.path().join("a.json")).unwrap();
    assert_eq!(reloaded.encode(s).unwrap(), a.encode(s).unwrap());
}
