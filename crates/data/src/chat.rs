//! Gemma's chat format for supervised fine-tuning: conversations, their tokens and loss masks.
//!
//! A conversation is `{"messages": [{"role": "user" | "model" | "assistant", "content": "..."},
//! ...]}`. It is written as Gemma's instruction-tuned template writes it:
//!
//! ```text
//! <bos><start_of_turn>user\n{content.strip()}<end_of_turn>\n<start_of_turn>model\n{...}<end_of_turn>\n...
//! ```
//!
//! `assistant` is written as `model`; roles must alternate, starting with `user`; a `system`
//! message is refused, as transformers' Gemma template refuses it (Gemma has no system role).
//!
//! The ids are those of tokenizing the whole rendered text at once (after `<bos>`), with
//! `<start_of_turn>` and `<end_of_turn>` matched as the special pieces they are. The loss mask
//! is 1 on the tokens of each model turn's content and on its `<end_of_turn>` (so the model
//! learns to stop), 0 on `<bos>`, user turns, the `<start_of_turn>model\n` header and the
//! newline after `<end_of_turn>`. A token is a target when any byte of its text lies in a
//! trained span; with the Gemma tokenizer no token crosses a span's edge (control pieces and
//! newlines are whole pieces), which `tests/chat.rs` checks against SentencePiece.
//!
//! ```
//! use data::chat::{Message, Role, render};
//! let msgs = [Message::new(Role::User, " 2+2? "), Message::new(Role::Model, "4\n")];
//! let (text, trained) = render(&msgs);
//! assert_eq!(text, "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n");
//! assert_eq!(&text[trained[0].clone()], "4<end_of_turn>");
//! ```

use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result, Tokenizer};

/// `<start_of_turn>`.
pub const START_OF_TURN: &str = "<start_of_turn>";
/// `<end_of_turn>`.
pub const END_OF_TURN: &str = "<end_of_turn>";

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user (`user`).
    User,
    /// The model (`model`, or `assistant` in the input).
    Model,
}

impl Role {
    /// The role as the template writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Model => "model",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its role.
    pub role: Role,
    /// Its text, as given (the template strips surrounding whitespace).
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A tokenized conversation: `input_ids` and a `loss_mask` of the same length, 1 where the
/// token is a target (predicted from the tokens before it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatTokens {
    /// Token ids, `<bos>` first.
    pub input_ids: Vec<u32>,
    /// 1 on trained tokens, else 0.
    pub loss_mask: Vec<u8>,
}

/// Parses `{"messages": [...]}`; the error says what is wrong (the caller adds file and line).
pub fn parse_conversation(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let msgs = v
        .get("messages")
        .ok_or("missing field \"messages\": {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} expected")?
        .as_array()
        .ok_or("\"messages\" is not an array of messages")?;
    if msgs.is_empty() {
        return Err("\"messages\" is empty: at least one message expected".into());
    }
    let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let obj = m.as_object().ok_or_else(|| {
            format!("message {i} is not an object {{\"role\": ..., \"content\": ...}}")
        })?;
        let role = obj
            .get("role")
            .ok_or_else(|| format!("message {i} has no \"role\""))?;
        let role = match role.as_str() {
            Some("user") => Role::User,
            Some("model" | "assistant") => Role::Model,
            Some("system") => {
                return Err(format!(
                    "message {i}: role \"system\": Gemma has no system role (its chat template \
                     refuses one too); put the instructions in the first user message"
                ));
            }
            _ => {
                return Err(format!(
                    "message {i}: role {role} is not \"user\", \"model\" or \"assistant\""
                ));
            }
        };
        let content = obj
            .get("content")
            .ok_or_else(|| format!("message {i} has no \"content\""))?
            .as_str()
            .ok_or_else(|| format!("message {i}: \"content\" is not a string"))?;
        let expected = if i % 2 == 0 { Role::User } else { Role::Model };
        if role != expected {
            let why = if i == 0 {
                "a conversation starts with a user message".to_string()
            } else {
                format!("it follows a {} message", out[i - 1].role.name())
            };
            return Err(format!(
                "message {i}: role {:?}, expected {:?}: roles must alternate user/model and {why}",
                role.name(),
                expected.name()
            ));
        }
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// The template's text after `<bos>`, and the byte ranges in it that are trained (each model
/// turn's stripped content and its `<end_of_turn>`).
pub fn render(messages: &[Message]) -> (String, Vec<Range<usize>>) {
    let mut text = String::new();
    let mut trained = Vec::new();
    for m in messages {
        text.push_str(START_OF_TURN);
        text.push_str(m.role.name());
        text.push('\n');
        let start = text.len();
        text.push_str(m.content.trim());
        text.push_str(END_OF_TURN);
        if m.role == Role::Model {
            trained.push(start..text.len());
        }
        text.push('\n');
    }
    (text, trained)
}

/// The prompt for generating the model's next turn: the conversation so far (ending with a
/// user message), then `<start_of_turn>model\n`; without `<bos>`.
pub fn render_prompt(messages: &[Message]) -> String {
    let (mut text, _) = render(messages);
    text.push_str(START_OF_TURN);
    text.push_str("model\n");
    text
}

/// Tokenizes a conversation: `<bos>`, then the ids of the whole rendered text, with the loss
/// mask described in the module docs.
pub fn encode_chat(tok: &Tokenizer, messages: &[Message]) -> Result<ChatTokens> {
    for piece in [START_OF_TURN, END_OF_TURN] {
        if tok.piece_to_id(piece).is_none() {
            return Err(Error::Tokenizer {
                name: tok.name().to_string(),
                message: format!("has no {piece} piece: it cannot encode conversations"),
            });
        }
    }
    let (text, trained) = render(messages);
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    let mut input_ids = Vec::with_capacity(ids.len() + 1);
    let mut loss_mask = Vec::with_capacity(ids.len() + 1);
    input_ids.push(tok.bos_id());
    loss_mask.push(0);
    for (id, (s, e)) in ids.into_iter().zip(offsets) {
        let hit = trained
            .iter()
            .any(|r| (s < r.end && e > r.start) || (s == e && r.contains(&s)));
        input_ids.push(id);
        loss_mask.push(hit as u8);
    }
    Ok(ChatTokens {
        input_ids,
        loss_mask,
    })
}

/// Tokenizes a conversation for the loader: [`encode_chat`], except that one ending with a
/// user message is a prompt for the model's next turn, so it ends with the generation prompt
/// (`<start_of_turn>model\n`, [`render_prompt`]). The added tokens are never trained, and
/// come after every trained token, so an SFT loss is the same either way.
pub fn encode_conversation(tok: &Tokenizer, messages: &[Message]) -> Result<ChatTokens> {
    let mut c = encode_chat(tok, messages)?;
    if messages.last().map(|m| m.role) == Some(Role::User) {
        let mut tail = String::from(START_OF_TURN);
        tail.push_str("model\n");
        let ids = tok.encode(&tail)?;
        c.loss_mask.extend(std::iter::repeat_n(0, ids.len()));
        c.input_ids.extend(ids);
    }
    Ok(c)
}

/// Reads the conversations of a JSONL file, one `{"messages": [...]}` per non-empty line, as
/// `(line, messages)`; a bad line is an error naming the file and line.
pub fn read_chat_file(path: &Path) -> Result<Vec<(u64, Vec<Message>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push((
            i as u64 + 1,
            parse_line(line).map_err(|m| bad(path, i + 1, m))?,
        ));
    }
    Ok(out)
}

/// Parses one JSONL line as a conversation.
pub fn parse_line(line: &str) -> std::result::Result<Vec<Message>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    parse_conversation(&v)
}

fn bad(path: &Path, line: usize, message: String) -> Error {
    Error::BadInput {
        file: path.to_path_buf(),
        line: line as u64,
        message,
    }
}

/// What to do with a conversation longer than `data.seq_len` (`data.overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Keep its first `seq_len` tokens.
    #[default]
    Truncate,
    /// Leave it out.
    Drop,
    /// Stop with an error naming it.
    Error,
}

impl Overflow {
    /// The config value (`truncate`, `drop`, `error`).
    pub fn name(self) -> &'static str {
        match self {
            Overflow::Truncate => "truncate",
            Overflow::Drop => "drop",
            Overflow::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        parse_conversation(&v).unwrap_err()
    }

    #[test]
    fn parses_and_refuses() {
        let ok = parse_conversation(&json!({"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]}))
        .unwrap();
        assert_eq!(ok[1], Message::new(Role::Model, "b"));
        assert!(err(json!({"msgs": []})).contains("missing field \"messages\""));
        assert!(err(json!({"messages": []})).contains("empty"));
        assert!(
            err(json!({"messages": [{"role": "system", "content": "x"}]}))
                .contains("no system role")
        );
        assert!(
            err(json!({"messages": [{"role": "model", "content": "x"}]}))
                .contains("starts with a user message")
        );
        let e = err(json!({"messages": [
            {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}));
        assert!(e.contains("message 1") && e.contains("alternate"), "{e}");
        assert!(
            err(json!({"messages": [{"role": "user", "content": 3}]})).contains("not a string")
        );
        assert!(err(json!({"messages": [{"role": "bot", "content": "x"}]})).contains("\"bot\""));
    }

    #[test]
    fn renders_the_template() {
        let msgs = [
            Message::new(Role::User, "\n hi \t"),
            Message::new(Role::Model, "  hello  "),
            Message::new(Role::User, "bye"),
        ];
        let (text, trained) = render(&msgs);
        assert_eq!(
            text,
            "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n\
             <start_of_turn>user\nbye<end_of_turn>\n"
        );
        assert_eq!(trained.len(), 1);
        assert_eq!(&text[trained[0].clone()], "hello<end_of_turn>");
        assert_eq!(
            render_prompt(&msgs[..1]),
            "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn smoke_tokenizer_masks_model_turns() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/data/shakespeare-bpe8k.json"
        );
        let tok = Tokenizer::from_file(Path::new(path)).unwrap();
        let msgs = [
            Message::new(Role::User, "What is 2+3?"),
            Message::new(Role::Model, "5"),
        ];
        let c = encode_chat(&tok, &msgs).unwrap();
        let (text, _) = render(&msgs);
        let mut whole = vec![tok.bos_id()];
        whole.extend(tok.encode(&text).unwrap());
        assert_eq!(c.input_ids, whole);
        let sot = tok.piece_to_id(START_OF_TURN).unwrap();
        let eot = tok.piece_to_id(END_OF_TURN).unwrap();
        // The trained tokens are exactly "5" and the last <end_of_turn>.
        let trained: Vec<u32> = c
            .input_ids
            .iter()
            .zip(&c.loss_mask)
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(trained.last(), Some(&eot));
        assert_eq!(tok.decode(&trained[..trained.len() - 1]).unwrap(), "5");
        assert_eq!(c.input_ids.iter().filter(|&&i| i == sot).count(), 2);
    }
}
