//! Templates: the file is loaded and checked once at start-up into a [`Catalog`]; after that,
//! rendering an event either yields an [`OutgoingMessage`] WeChat will accept, or a [`RenderError`]
//! naming the key (→ dead-letter `render_failed`).
//!
//! Start-up checks (each failure is a configuration error, exit 2, naming template and key):
//! every key is a WeChat keyword type; every value compiles; constant values fit their keyword;
//! every template renders on a sample event (built in, overridable with `sample = {...}`) into
//! values that fit their keywords; at most one template per (app, event type).

pub mod file;
pub mod filters;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::json;

use crate::event::BookingEvent;
use crate::wechat::keywords::{self, KeywordType};
use crate::wechat::{Api, Miniprogram, OutgoingMessage};
pub use file::{AppSpec, TemplatesFile};

/// A templates file that cannot be used. Always names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum TemplateConfigError {
    #[error("cannot read templates file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("templates file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("template {template}: {message}")]
    Template { template: String, message: String },
}

/// Why one event could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

/// One checked template.
#[derive(Debug)]
pub struct Template {
    pub event_type: String,
    pub template_id: String,
    pub app_id: Option<String>,
    pub api: Api,
    /// `"#2 (booking.confirmed → TPL_X)"`, for messages.
    pub label: String,
    index: usize,
    keys: Vec<String>,
    has_url: bool,
    has_page: bool,
    miniprogram: Option<Miniprogram>,
    miniprogram_state: Option<String>,
    lang: Option<String>,
}

/// All templates of a file, compiled, plus the file's extra apps.
pub struct Catalog {
    env: Environment<'static>,
    templates: Vec<Template>,
    lookup: HashMap<(Option<String>, String), usize>,
    pub apps: Vec<AppSpec>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("templates", &self.templates)
            .field("apps", &self.apps)
            .finish()
    }
}

const MINIPROGRAM_STATES: [&str; 3] = ["developer", "trial", "formal"];
const LANGS: [&str; 4] = ["zh_CN", "en_US", "zh_HK", "zh_TW"];

fn sample_event() -> serde_json::Value {
    json!({
        "event_id": "evt-sample-000001",
        "event_type": "booking.confirmed",
        "occurred_at": "2026-11-21T09:30:00+08:00",
        "openid": "oSAMPLE0000000000000000000000",
        "app_id": "wx0000000000000000",
        "data": {
            "booking_id": "B-10023", "service": "精洗套餐", "store": "徐汇店",
            "slot_start": "2026-11-22T14:00:00+08:00", "slot_end": "2026-11-22T15:00:00+08:00",
            "plate": "沪A12345", "price_cents": 3980, "customer_name": "张三",
            "phone": "13800138000", "status": "已确认", "reason": "门店临时关闭"
        }
    })
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

fn is_constant(source: &str) -> bool {
    !source.contains("{{") && !source.contains("{%")
}

impl Catalog {
    /// Reads and checks a templates file.
    pub fn load(path: &Path) -> Result<Self, TemplateConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks a templates file given as text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TemplateConfigError> {
        let file: TemplatesFile = toml::from_str(text).map_err(|e| TemplateConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("datetime", filters::datetime);
        env.add_filter("yuan", filters::yuan);

        let mut templates = Vec::new();
        let mut lookup = HashMap::new();
        let mut samples = Vec::new();
        for (index, spec) in file.templates.into_iter().enumerate() {
            let label = format!("#{} ({} → {})", index + 1, spec.event_type, spec.template_id);
            let fail = |message: String| TemplateConfigError::Template {
                template: label.clone(),
                message,
            };
            if spec.event_type.trim().is_empty() || spec.template_id.trim().is_empty() {
                return Err(fail("`event_type` and `template_id` must not be empty".into()));
            }
            if spec.data.is_empty() {
                return Err(fail("`data` has no keywords".into()));
            }
            for (key, source) in &spec.data {
                if KeywordType::of_key(key).is_none() {
                    return Err(fail(format!(
                        "data.{key}: not a WeChat keyword type (thing, number, letter, symbol, character_string, \
                         time, date, amount, phone_number, car_number, name, phrase, const, followed by a number)"
                    )));
                }
                if is_constant(source) {
                    keywords::check(key, source).map_err(|e| fail(format!("data.{key}: {e}")))?;
                }
                env.add_template_owned(format!("{index}.data.{key}"), source.clone())
                    .map_err(|e| fail(format!("data.{key}: {e}")))?;
            }
            match spec.api {
                Api::Template => {
                    if spec.page.is_some() || spec.miniprogram_state.is_some() || spec.lang.is_some() {
                        return Err(fail(
                            "`page`, `miniprogram_state` and `lang` belong to api = \"subscribe\"".into(),
                        ));
                    }
                }
                Api::Subscribe => {
                    if spec.url.is_some() || spec.miniprogram.is_some() {
                        return Err(fail("`url` and `miniprogram` belong to api = \"template\"".into()));
                    }
                    if let Some(s) = &spec.miniprogram_state
                        && !MINIPROGRAM_STATES.contains(&s.as_str())
                    {
                        return Err(fail(format!(
                            "miniprogram_state: {s:?} is not one of developer, trial, formal"
                        )));
                    }
                    if let Some(l) = &spec.lang
                        && !LANGS.contains(&l.as_str())
                    {
                        return Err(fail(format!("lang: {l:?} is not one of zh_CN, en_US, zh_HK, zh_TW")));
                    }
                }
            }
            for (name, source) in [("url", &spec.url), ("page", &spec.page)] {
                if let Some(source) = source {
                    env.add_template_owned(format!("{index}.{name}"), source.clone())
                        .map_err(|e| fail(format!("{name}: {e}")))?;
                }
            }
            let slot = (spec.app_id.clone(), spec.event_type.clone());
            if lookup.insert(slot, index).is_some() {
                return Err(fail(format!(
                    "a second template for event type {:?}{}: one template per event type and app",
                    spec.event_type,
                    spec.app_id
                        .as_deref()
                        .map(|a| format!(" and app {a}"))
                        .unwrap_or_default()
                )));
            }
            let mut sample = sample_event();
            sample["event_type"] = json!(spec.event_type);
            if let Some(over) = spec.sample {
                let over = serde_json::to_value(over).map_err(|e| fail(format!("sample: {e}")))?;
                merge(&mut sample, over);
            }
            samples.push(sample);
            templates.push(Template {
                event_type: spec.event_type,
                template_id: spec.template_id,
                app_id: spec.app_id,
                api: spec.api,
                label,
                index,
                keys: spec.data.into_keys().collect(),
                has_url: spec.url.is_some(),
                has_page: spec.page.is_some(),
                miniprogram: spec.miniprogram,
                miniprogram_state: spec.miniprogram_state,
                lang: spec.lang,
            });
        }
        let catalog = Catalog {
            env,
            templates,
            lookup,
            apps: file.apps,
        };
        for (template, sample) in catalog.templates.iter().zip(samples) {
            let ctx = Value::from(Serde(&sample));
            catalog.render_with(template, &ctx, "sample".into(), "wxn-sample".into()).map_err(|e| {
                TemplateConfigError::Template {
                    template: template.label.clone(),
                    message: format!(
                        "fails on the sample event: {e} (give the fields it needs with `sample = {{ data = {{ ... }} }}`)"
                    ),
                }
            })?;
        }
        let mut seen = std::collections::HashSet::new();
        for app in &catalog.apps {
            if !seen.insert(app.app_id.as_str()) {
                return Err(TemplateConfigError::Parse {
                    path: origin.to_string(),
                    message: format!("app {} is listed twice in [[apps]]", app.app_id),
                });
            }
        }
        Ok(catalog)
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The template for an event: one made for its app first, else one for any app.
    pub fn find(&self, app_id: &str, event_type: &str) -> Option<&Template> {
        self.lookup
            .get(&(Some(app_id.to_string()), event_type.to_string()))
            .or_else(|| self.lookup.get(&(None, event_type.to_string())))
            .map(|&i| &self.templates[i])
    }

    /// Renders an event into a message for `template`.
    pub fn render(
        &self,
        template: &Template,
        event: &BookingEvent,
        client_msg_id: String,
    ) -> Result<OutgoingMessage, RenderError> {
        let ctx = Value::from(Serde(event));
        self.render_with(template, &ctx, event.openid.clone(), client_msg_id)
    }

    fn render_with(
        &self,
        template: &Template,
        ctx: &Value,
        touser: String,
        client_msg_id: String,
    ) -> Result<OutgoingMessage, RenderError> {
        let render = |name: &str| -> Result<String, RenderError> {
            let field = name.to_string();
            let tpl = self
                .env
                .get_template(&format!("{}.{name}", template.index))
                .map_err(|e| RenderError {
                    field: field.clone(),
                    message: e.to_string(),
                })?;
            tpl.render(ctx.clone()).map_err(|e| RenderError {
                field,
                message: describe(&e),
            })
        };
        let mut data = BTreeMap::new();
        for key in &template.keys {
            let field = format!("data.{key}");
            let value = render(&field)?;
            keywords::check(key, &value).map_err(|e| RenderError {
                field,
                message: e.to_string(),
            })?;
            data.insert(key.clone(), value);
        }
        Ok(OutgoingMessage {
            api: template.api,
            touser,
            template_id: template.template_id.clone(),
            client_msg_id,
            url: template.has_url.then(|| render("url")).transpose()?,
            miniprogram: template.miniprogram.clone(),
            page: template.has_page.then(|| render("page")).transpose()?,
            miniprogram_state: template.miniprogram_state.clone(),
            lang: template.lang.clone(),
            data,
        })
    }
}

/// MiniJinja's error with its cause, on one line.
fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[templates]]
event_type = "booking.confirmed"
template_id = "TPL_BOOKING_CONFIRMED"
url = "https://wash.example.com/bookings/{{ data.booking_id }}"
[templates.data]
thing1 = "{{ data.service }}"
thing2 = "{{ data.store }}"
time3 = "{{ data.slot_start | datetime('%Y年%m月%d日 %H:%M') }}"
car_number4 = "{{ data.plate }}"
amount5 = "{{ data.price_cents | yuan }}"

[[templates]]
event_type = "booking.reminder"
api = "subscribe"
template_id = "TPL_REMINDER"
page = "pages/booking/detail?id={{ data.booking_id }}"
miniprogram_state = "formal"
[templates.data]
thing1 = "{{ data.service }}"
time2 = "{{ data.slot_start | datetime('%Y-%m-%d %H:%M') }}"

[[apps]]
app_id = "wx2222222222222222"
secret_env = "WECHAT_APP_SECRET_2"
"#;

    fn event(data: serde_json::Value) -> BookingEvent {
        let body = json!({"event_id": "e1", "event_type": "booking.confirmed",
            "occurred_at": "2026-11-21T09:30:00+08:00", "openid": "o1", "data": data});
        BookingEvent::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_contract_example_loads_and_renders() {
        let c = Catalog::parse(GOOD, "test").unwrap();
        assert_eq!(c.apps.len(), 1);
        let t = c.find("wxdefault", "booking.confirmed").unwrap();
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐", "store": "徐汇店",
            "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}));
        let m = c.render(t, &e, "id".into()).unwrap();
        assert_eq!(m.data["amount5"], "39.80元");
        assert_eq!(m.data["time3"], "2026年11月22日 14:00");
        assert_eq!(m.url.as_deref(), Some("https://wash.example.com/bookings/B-1"));
        assert!(c.find("wxdefault", "booking.unknown").is_none());
    }

    #[test]
    fn render_fails_on_missing_field_and_on_keyword_rules() {
        let c = Catalog::parse(GOOD, "test").unwrap();
        let t = c.find("wx", "booking.confirmed").unwrap();
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐"}));
        let err = c.render(t, &e, "id".into()).unwrap_err();
        assert!(err.field.starts_with("data."), "{err}");
        let e = event(
            json!({"booking_id": "B-1", "service": "一个非常非常非常非常非常非常非常长的服务名称", "store": "s",
            "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 1}),
        );
        let err = c.render(t, &e, "id".into()).unwrap_err();
        assert_eq!(err.field, "data.thing1");
    }

    #[test]
    fn bad_files_name_template_and_key() {
        let unknown = GOOD.replace("thing2 = ", "colour2 = ");
        let err = Catalog::parse(&unknown, "t").unwrap_err().to_string();
        assert!(err.contains("#1") && err.contains("colour2"), "{err}");
        let long = GOOD.replace(
            r#"thing2 = "{{ data.store }}""#,
            r#"thing2 = "这是一段超过二十个字符的固定文本内容真的很长很长""#,
        );
        let err = Catalog::parse(&long, "t").unwrap_err().to_string();
        assert!(err.contains("thing2") && err.contains("20"), "{err}");
        let unrenderable = GOOD.replace("{{ data.store }}", "{{ data.no_such_field }}");
        let err = Catalog::parse(&unrenderable, "t").unwrap_err().to_string();
        assert!(err.contains("data.thing2") && err.contains("sample"), "{err}");
        let syntax = GOOD.replace("{{ data.store }}", "{{ data.store ");
        assert!(Catalog::parse(&syntax, "t").unwrap_err().to_string().contains("thing2"));
        let with_sample = unrenderable.replacen(
            "[templates.data]",
            "sample = { data = { no_such_field = \"x\" } }\n[templates.data]",
            1,
        );
        Catalog::parse(&with_sample, "t").unwrap();
    }
}
