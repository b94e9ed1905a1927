//! Chat templates: the Jinja template in `tokenizer_config.json`, rendered with minijinja the
//! way transformers' `apply_chat_template` renders it (trim_blocks, lstrip_blocks, Python string
//! methods, `raise_exception`, `strftime_now`, special tokens in the context).

use minijinja::{Environment, ErrorKind, Value as JValue};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::TokenizerError;

/// One turn of a conversation. Extra fields (tool calls, names) pass through to the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), extra: Default::default() }
    }
    pub fn system(c: impl Into<String>) -> Self {
        Self::new("system", c)
    }
    pub fn user(c: impl Into<String>) -> Self {
        Self::new("user", c)
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Self::new("assistant", c)
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    specials: serde_json::Map<String, serde_json::Value>,
    path: PathBuf,
}

impl ChatTemplate {
    /// Compile a template. `specials` (bos_token, eos_token, ...) are exposed to it as variables.
    pub fn new(source: &str, specials: serde_json::Map<String, serde_json::Value>, path: &Path) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // jinja2 settings transformers uses for chat templates.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TokenizerError::Template { path: path.into(), msg: e.to_string() })?;
        Ok(Self { env, source: source.into(), specials, path: path.into() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with `tools` (OpenAI function-tool objects, as
    /// `apply_chat_template(tools=...)`) visible to the template.
    pub fn render_with_tools(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>, add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let tmpl = self.env.get_template("chat").expect("added in new()");
        let mut ctx = self.specials.clone();
        ctx.insert("messages".into(), serde_json::to_value(messages).expect("serializable"));
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("tools".into(), tools.cloned().unwrap_or(serde_json::Value::Null));
        ctx.insert("documents".into(), serde_json::Value::Null);
        tmpl.render(JValue::from_serialize(&ctx)).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            TokenizerError::Template { path: self.path.clone(), msg }
        })
    }
}

/// The subset of strftime that chat templates use (`%d %b %Y`, `%B`, `%m`, `%H:%M`), in UTC.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, Default::default(), Path::new("x")).unwrap();
        let msgs = [ChatMessage::system("S"), ChatMessage::user("Hi")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t.render(&msgs, false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}{{ eos_token }}";
        let mut sp = serde_json::Map::new();
        sp.insert("eos_token".into(), "</s>".into());
        let t = ChatTemplate::new(src, sp, Path::new("x")).unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  hi ")], false).unwrap(), "HI</s>");
        let err = t.render(&[ChatMessage::assistant("x")], false).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn strftime_subset() {
        let s = strftime_now("%d %b %Y");
        assert_eq!(s.len(), 11, "{s}");
    }
}
