//! Templates: the file is loaded and checked once at start-up into a [`Catalog`]; after that,
//! rendering an event either yields an [`OutgoingMessage`] WeChat will accept, or a [`RenderError`]
//! naming the key (→ dead-letter `render_failed`).
//!
//! Start-up checks (each failure is a configuration error, exit 2, naming template and key):
//! every key is a WeChat keyword type; every value compiles; constant values fit their keyword;
//! every template renders on a sample event (built in, overridable with `sample = {...}`) into
//! values that fit their keywords; `send_at` and `not_after` render to RFC 3339 instants on the
//! sample, `quiet_hours` parses, every `cancelled_by` type is some template's event type; at most
//! one template per (app, event type, template id). Several templates of one event type are each
//! their own delivery.

pub(crate) mod file;
pub(crate) mod filters;
pub(crate) mod library;
pub(crate) mod shorten;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::json;

use crate::event::BookingEvent;
pub(crate) use crate::schedule::timing::{QuietHours, Timing};
use crate::wechat::keywords::{self, KeywordType};
use crate::wechat::{Api, Miniprogram, OutgoingMessage};
pub(crate) use file::ConsentMode;
pub(crate) use file::{AppSpec, PlatformSpec, TemplatesFile};
use file::{DataValue, TemplateSpec};

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
    /// A library template, added to each merchant's account; `template_id` is its `library_id`.
    pub library: Option<std::sync::Arc<library::Library>>,
    /// `"#2 (booking.confirmed → TPL_X)"`, for messages.
    pub label: String,
    index: usize,
    keys: Vec<String>,
    /// Each key's compiled template in the environment, `"{index}.data.{key}"`: named once here,
    /// not per delivery.
    data_names: Vec<String>,
    has_url: bool,
    has_page: bool,
    miniprogram: Option<Miniprogram>,
    miniprogram_state: Option<String>,
    lang: Option<String>,
    has_send_at: bool,
    has_not_after: bool,
    has_cancel_key: bool,
    pub quiet_hours: Option<QuietHours>,
    /// Event types that cancel this template's waiting deliveries.
    pub cancelled_by: Vec<String>,
    /// Its own consent mode; the app's when `None` ([`Catalog::tracks_consent`]).
    consent: Option<ConsentMode>,
}

impl Template {
    /// Its keywords (`data` keys).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Its deliveries wait in the ledger (scheduled, cancellable, quiet hours or an expiry)
    /// instead of going out the moment the event is consumed.
    pub fn is_held(&self) -> bool {
        self.has_send_at || self.has_not_after || self.has_cancel_key || self.quiet_hours.is_some()
    }
}

/// All templates of a file, compiled, plus the file's extra apps.
pub struct Catalog {
    env: Environment<'static>,
    templates: Vec<Template>,
    /// (app or any, event type) → the templates making its deliveries.
    lookup: HashMap<(Option<String>, String), Vec<usize>>,
    /// Event type → the templates it cancels deliveries of.
    cancels: HashMap<String, Vec<usize>>,
    pub apps: Vec<AppSpec>,
    /// The third-party platforms (docs/interface.md §10).
    pub platforms: Vec<PlatformSpec>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("templates", &self.templates)
            .field("apps", &self.apps)
            .field("platforms", &self.platforms)
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

/// The rendering environment: strict about undefined values, with wxnotify's filters.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("datetime", filters::datetime);
    env.add_filter("yuan", filters::yuan);
    env.add_filter("add_minutes", filters::add_minutes);
    env
}

/// `event_type` and `template_id` are given, and `data` has keywords.
fn check_names(spec: &TemplateSpec) -> Result<(), String> {
    if spec.event_type.trim().is_empty() || spec.template_id.trim().is_empty() {
        return Err("`event_type` and `template_id` (or `library_id`) must not be empty".into());
    }
    if spec.data.is_empty() {
        return Err("`data` has no keywords".into());
    }
    Ok(())
}

/// Every `data` key is a keyword type, every constant value fits it, every value compiles.
fn compile_data(env: &mut Environment<'static>, index: usize, spec: &TemplateSpec) -> Result<(), String> {
    for (key, value) in &spec.data {
        let source = source_of(key, value)?;
        if KeywordType::of_key(key).is_none() {
            return Err(format!(
                "data.{key}: not a WeChat keyword type (thing, number, letter, symbol, character_string, \
                 time, date, amount, phone_number, car_number, name, phrase, const, followed by a number)"
            ));
        }
        if is_constant(source) {
            keywords::check(key, source).map_err(|e| format!("data.{key}: {e}"))?;
            if spec.api == Api::Template
                && let Some(cut) = shorten::would_cut(source)
            {
                return Err(format!("data.{key}: the value {cut}"));
            }
        }
        env.add_template_owned(format!("{index}.data.{key}"), source.to_string())
            .map_err(|e| format!("data.{key}: {e}"))?;
    }
    Ok(())
}

/// A keyword's MiniJinja source; `first`, `remark` and colours are refused with WeChat's reason.
fn source_of<'a>(key: &str, value: &'a DataValue) -> Result<&'a str, String> {
    if key == "first" || key == "remark" {
        return Err(format!(
            "data.{key}: WeChat drops `first` and `remark` from template messages since 2023-05-04, so \
             the user would never see it; put the text in a keyword (e.g. thing5)"
        ));
    }
    match value {
        DataValue::Source(source) => Ok(source),
        DataValue::Table(t) if t.contains_key("color") || t.contains_key("colour") => Err(format!(
            "data.{key}: WeChat ignores colours in template messages since 2023-05-04; give the value \
             as a plain string"
        )),
        DataValue::Table(_) => Err(format!("data.{key}: must be a string (MiniJinja source)")),
    }
}

/// No colour (dropped by WeChat since 2023); `consent` only on subscribe messages.
fn check_style_and_consent(spec: &TemplateSpec) -> Result<(), String> {
    if spec.color.is_some() {
        return Err("`color`: WeChat ignores colours in template messages since 2023-05-04; remove it".into());
    }
    if spec.consent == Some(ConsentMode::Tracked) && spec.api != Api::Subscribe {
        return Err(
            "consent = \"tracked\" applies to subscribe messages (api = \"subscribe\"): template \
             messages need no consent"
                .into(),
        );
    }
    Ok(())
}

/// The fields of the other API are absent; `miniprogram_state` and `lang` are values WeChat knows.
fn check_api_fields(spec: &TemplateSpec) -> Result<(), String> {
    match spec.api {
        Api::Template => {
            if spec.page.is_some() || spec.miniprogram_state.is_some() || spec.lang.is_some() {
                return Err("`page`, `miniprogram_state` and `lang` belong to api = \"subscribe\"".into());
            }
        }
        Api::Subscribe => {
            if spec.url.is_some() || spec.miniprogram.is_some() {
                return Err("`url` and `miniprogram` belong to api = \"template\"".into());
            }
            if let Some(s) = &spec.miniprogram_state
                && !MINIPROGRAM_STATES.contains(&s.as_str())
            {
                return Err(format!(
                    "miniprogram_state: {s:?} is not one of developer, trial, formal"
                ));
            }
            if let Some(l) = &spec.lang
                && !LANGS.contains(&l.as_str())
            {
                return Err(format!("lang: {l:?} is not one of zh_CN, en_US, zh_HK, zh_TW"));
            }
        }
    }
    Ok(())
}

/// Compiles the optional templated fields besides `data`.
fn compile_fields(env: &mut Environment<'static>, index: usize, spec: &TemplateSpec) -> Result<(), String> {
    for (name, source) in [
        ("url", &spec.url),
        ("page", &spec.page),
        ("send_at", &spec.send_at),
        ("not_after", &spec.not_after),
        ("cancel_key", &spec.cancel_key),
    ] {
        if let Some(source) = source {
            env.add_template_owned(format!("{index}.{name}"), source.clone())
                .map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(())
}

/// `quiet_hours` parses (returned), and `cancelled_by` comes with a `cancel_key`.
fn check_scheduling(spec: &TemplateSpec) -> Result<Option<QuietHours>, String> {
    let quiet_hours = spec
        .quiet_hours
        .as_deref()
        .map(str::parse::<QuietHours>)
        .transpose()
        .map_err(|e| format!("quiet_hours: {e}"))?;
    if !spec.cancelled_by.is_empty() && spec.cancel_key.is_none() {
        return Err("`cancelled_by` needs a `cancel_key` to match deliveries by".into());
    }
    Ok(quiet_hours)
}

/// The error of a second template with the same (app, event type, template id).
fn duplicate_message(spec: &TemplateSpec) -> String {
    format!(
        "a second template {} for event type {:?}{}: each (event type, template id) once",
        spec.template_id,
        spec.event_type,
        spec.app_id
            .as_deref()
            .map(|a| format!(" and app {a}"))
            .unwrap_or_default()
    )
}

/// The built-in sample event of the template's event type, with its `sample` merged over it.
fn sample_for(spec: &TemplateSpec) -> Result<serde_json::Value, String> {
    let mut sample = sample_event();
    sample["event_type"] = json!(spec.event_type);
    if let Some(over) = &spec.sample {
        let over = serde_json::to_value(over).map_err(|e| format!("sample: {e}"))?;
        merge(&mut sample, over);
    }
    Ok(sample)
}

/// No app is listed twice in `[[apps]]`, and each `rate_limit` is a rate WXNOTIFY_RATE_LIMIT
/// could be.
fn check_apps_listed_once(apps: &[AppSpec], origin: &str) -> Result<(), TemplateConfigError> {
    let mut seen = HashSet::new();
    let refuse = |message: String| TemplateConfigError::Parse {
        path: origin.to_string(),
        message,
    };
    for app in apps {
        if !seen.insert(app.app_id.as_str()) {
            return Err(refuse(format!("app {} is listed twice in [[apps]]", app.app_id)));
        }
        if let Some(r) = app.rate_limit
            && !(r.is_finite() && (0.01..=100_000.0).contains(&r))
        {
            return Err(refuse(format!(
                "app {}: rate_limit must be a number of sends a second between 0.01 and 100000",
                app.app_id
            )));
        }
    }
    Ok(())
}

/// Each platform is listed once, names its three environment variables, and is not also an app.
fn check_platforms(platforms: &[PlatformSpec], apps: &[AppSpec], origin: &str) -> Result<(), TemplateConfigError> {
    let refuse = |message: String| TemplateConfigError::Parse {
        path: origin.to_string(),
        message,
    };
    let mut seen = HashSet::new();
    for p in platforms {
        let id = p.component_appid.trim();
        if id.is_empty() {
            return Err(refuse("[[platforms]]: component_appid is empty".into()));
        }
        if !seen.insert(id) {
            return Err(refuse(format!("platform {id} is listed twice in [[platforms]]")));
        }
        if apps.iter().any(|a| a.app_id == id) {
            return Err(refuse(format!(
                "{id} is both an app ([[apps]]) and a platform ([[platforms]])"
            )));
        }
        for (key, env) in [
            ("secret_env", &p.secret_env),
            ("callback_token_env", &p.callback_token_env),
            ("aes_key_env", &p.aes_key_env),
        ] {
            if env.trim().is_empty() {
                return Err(refuse(format!(
                    "platform {id}: {key} is empty (the environment variable's name)"
                )));
            }
        }
    }
    Ok(())
}

impl Template {
    /// A template from its checked spec.
    fn checked(spec: TemplateSpec, label: String, index: usize, quiet_hours: Option<QuietHours>) -> Self {
        Template {
            event_type: spec.event_type,
            template_id: spec.template_id,
            app_id: spec.app_id,
            api: spec.api,
            library: None,
            label,
            index,
            data_names: spec.data.keys().map(|key| format!("{index}.data.{key}")).collect(),
            keys: spec.data.into_keys().collect(),
            has_url: spec.url.is_some(),
            has_page: spec.page.is_some(),
            miniprogram: spec.miniprogram,
            miniprogram_state: spec.miniprogram_state,
            lang: spec.lang,
            has_send_at: spec.send_at.is_some(),
            has_not_after: spec.not_after.is_some(),
            has_cancel_key: spec.cancel_key.is_some(),
            quiet_hours,
            cancelled_by: spec.cancelled_by,
            consent: spec.consent,
        }
    }
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
        let mut catalog = Catalog {
            env: environment(),
            templates: Vec::new(),
            lookup: HashMap::new(),
            cancels: HashMap::new(),
            apps: file.apps,
            platforms: file.platforms,
        };
        let mut seen_ids = HashSet::new();
        let mut samples = Vec::new();
        for (index, spec) in file.templates.into_iter().enumerate() {
            samples.push(catalog.add(index, spec, &mut seen_ids)?);
        }
        catalog.check_cancelled_by()?;
        catalog.check_samples(samples)?;
        check_apps_listed_once(&catalog.apps, origin)?;
        check_platforms(&catalog.platforms, &catalog.apps, origin)?;
        catalog.check_library_use()?;
        Ok(catalog)
    }

    /// Checks one template's spec, compiles it into the environment and indexes it; returns its
    /// sample event. `seen_ids` holds the (app, event type, template id) of the templates before it.
    fn add(
        &mut self,
        index: usize,
        mut spec: TemplateSpec,
        seen_ids: &mut HashSet<(Option<String>, String, String)>,
    ) -> Result<serde_json::Value, TemplateConfigError> {
        let library = library::identify(&mut spec).map_err(|message| TemplateConfigError::Template {
            template: format!("#{} ({})", index + 1, spec.event_type),
            message,
        })?;
        let label = format!("#{} ({} → {})", index + 1, spec.event_type, spec.template_id);
        let fail = |message: String| TemplateConfigError::Template {
            template: label.clone(),
            message,
        };
        check_names(&spec).map_err(fail)?;
        compile_data(&mut self.env, index, &spec).map_err(fail)?;
        check_style_and_consent(&spec).map_err(fail)?;
        check_api_fields(&spec).map_err(fail)?;
        compile_fields(&mut self.env, index, &spec).map_err(fail)?;
        let quiet_hours = check_scheduling(&spec).map_err(fail)?;
        if !seen_ids.insert((spec.app_id.clone(), spec.event_type.clone(), spec.template_id.clone())) {
            return Err(fail(duplicate_message(&spec)));
        }
        self.lookup
            .entry((spec.app_id.clone(), spec.event_type.clone()))
            .or_default()
            .push(index);
        for by in &spec.cancelled_by {
            self.cancels.entry(by.clone()).or_default().push(index);
        }
        let sample = sample_for(&spec).map_err(fail)?;
        self.templates.push(Template {
            library: library.map(std::sync::Arc::new),
            ..Template::checked(spec, label, index, quiet_hours)
        });
        Ok(sample)
    }

    /// The library templates (docs/interface.md §10).
    pub fn libraries(&self) -> impl Iterator<Item = &library::Library> {
        self.templates.iter().filter_map(|t| t.library.as_deref())
    }

    /// Library templates are for merchants: a platform is configured, and none is restricted to
    /// an app of `[[apps]]` (whose templates are fixed ids).
    fn check_library_use(&self) -> Result<(), TemplateConfigError> {
        for t in self.templates.iter().filter(|t| t.library.is_some()) {
            let fail = |message: &str| TemplateConfigError::Template {
                template: t.label.clone(),
                message: message.to_string(),
            };
            if self.platforms.is_empty() {
                return Err(fail(
                    "`library_id` needs a [[platforms]] entry: library templates are added to merchants' accounts",
                ));
            }
            if t.app_id
                .as_ref()
                .is_some_and(|a| self.apps.iter().any(|s| &s.app_id == a))
            {
                return Err(fail(
                    "`library_id` is for merchants; an app of [[apps]] gives its own `template_id`",
                ));
            }
        }
        Ok(())
    }

    /// Every `cancelled_by` type is some template's event type.
    fn check_cancelled_by(&self) -> Result<(), TemplateConfigError> {
        let event_types: HashSet<&str> = self.templates.iter().map(|t| t.event_type.as_str()).collect();
        for t in &self.templates {
            if let Some(by) = t.cancelled_by.iter().find(|by| !event_types.contains(by.as_str())) {
                return Err(TemplateConfigError::Template {
                    template: t.label.clone(),
                    message: format!("cancelled_by: no template has event type {by:?}"),
                });
            }
        }
        Ok(())
    }

    /// Every template renders (and times) its sample event, one sample per template in order.
    fn check_samples(&self, samples: Vec<serde_json::Value>) -> Result<(), TemplateConfigError> {
        for (template, sample) in self.templates.iter().zip(samples) {
            let ctx = Value::from(Serde(&sample));
            self.render_with(template, &ctx, "sample".into(), "wxn-sample".into(), Values::Strict)
                .and_then(|_| self.timing_with(template, &ctx))
                .map_err(|e| {
                TemplateConfigError::Template {
                    template: template.label.clone(),
                    message: format!(
                        "fails on the sample event: {e} (give the fields it needs with `sample = {{ data = {{ ... }} }}`)"
                    ),
                }
            })?;
        }
        Ok(())
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The templates making an event's deliveries: those made for its app if there are any,
    /// else those for any app. Empty: the event has no template.
    pub fn find(&self, app_id: &str, event_type: &str) -> Vec<&Template> {
        self.lookup
            .get(&(Some(app_id.to_string()), event_type.to_string()))
            .or_else(|| self.lookup.get(&(None, event_type.to_string())))
            .map(|ix| ix.iter().map(|&i| &self.templates[i]).collect())
            .unwrap_or_default()
    }

    /// One of an event's templates, by template id.
    pub fn find_one(&self, app_id: &str, event_type: &str, template_id: &str) -> Option<&Template> {
        self.find(app_id, event_type)
            .into_iter()
            .find(|t| t.template_id == template_id)
    }

    /// The templates whose waiting deliveries an event of this type (and app) cancels.
    pub fn cancelled_by(&self, app_id: &str, event_type: &str) -> Vec<&Template> {
        self.cancels
            .get(event_type)
            .map(|ix| {
                ix.iter()
                    .map(|&i| &self.templates[i])
                    .filter(|t| t.app_id.as_deref().is_none_or(|a| a == app_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The template's `send_at`, `not_after` and `cancel_key` over an event.
    pub fn timing(&self, template: &Template, event: &BookingEvent) -> Result<Timing, RenderError> {
        if !(template.has_send_at || template.has_not_after || template.has_cancel_key) {
            return Ok(Timing::default());
        }
        self.timing_with(template, &Value::from(Serde(event)))
    }

    /// The template's `cancel_key` over a cancelling event (`None`: the template has none).
    pub fn cancel_key(&self, template: &Template, event: &BookingEvent) -> Result<Option<String>, RenderError> {
        self.cancel_key_with(template, &Value::from(Serde(event)))
    }

    fn timing_with(&self, template: &Template, ctx: &Value) -> Result<Timing, RenderError> {
        let instant = |name: &str, present: bool| -> Result<Option<chrono::DateTime<chrono::Utc>>, RenderError> {
            if !present {
                return Ok(None);
            }
            let text = self.render_field(template, name, ctx)?;
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|e| RenderError {
                    field: name.to_string(),
                    message: format!("{text:?} is not an RFC 3339 instant ({e})"),
                })
        };
        Ok(Timing {
            send_at: instant("send_at", template.has_send_at)?,
            not_after: instant("not_after", template.has_not_after)?,
            cancel_key: self.cancel_key_with(template, ctx)?,
        })
    }

    fn cancel_key_with(&self, template: &Template, ctx: &Value) -> Result<Option<String>, RenderError> {
        if !template.has_cancel_key {
            return Ok(None);
        }
        let key = self.render_field(template, "cancel_key", ctx)?;
        let key = key.trim();
        if key.is_empty() || key.contains('\0') || key.len() > 256 {
            return Err(RenderError {
                field: "cancel_key".into(),
                message: "must render to 1–256 bytes of text without U+0000".into(),
            });
        }
        Ok(Some(key.to_string()))
    }

    fn render_field(&self, template: &Template, name: &str, ctx: &Value) -> Result<String, RenderError> {
        self.render_named(&format!("{}.{name}", template.index), &|| name.to_string(), ctx)
    }

    /// Renders the compiled template `compiled`; `field` names the field in an error (built only
    /// then: this runs for every keyword of every delivery).
    fn render_named(&self, compiled: &str, field: &dyn Fn() -> String, ctx: &Value) -> Result<String, RenderError> {
        let tpl = self.env.get_template(compiled).map_err(|e| RenderError {
            field: field(),
            message: e.to_string(),
        })?;
        tpl.render(ctx.clone()).map_err(|e| RenderError {
            field: field(),
            message: describe(&e),
        })
    }

    /// Renders an event into a message for `template`.
    pub fn render(
        &self,
        template: &Template,
        event: &BookingEvent,
        client_msg_id: String,
    ) -> Result<OutgoingMessage, RenderError> {
        let ctx = Value::from(Serde(event));
        self.render_with(
            template,
            &ctx,
            event.openid().to_string(),
            client_msg_id,
            Values::Shorten,
        )
    }

    fn render_with(
        &self,
        template: &Template,
        ctx: &Value,
        touser: String,
        client_msg_id: String,
        values: Values,
    ) -> Result<OutgoingMessage, RenderError> {
        let render = |name: &str| self.render_field(template, name, ctx);
        let mut data = BTreeMap::new();
        let mut shortened = Vec::new();
        for (key, compiled) in template.keys.iter().zip(&template.data_names) {
            let field = || format!("data.{key}");
            let fail = |message: String| RenderError {
                field: field(),
                message,
            };
            let mut value = self.render_named(compiled, &field, ctx)?;
            let cut = (template.api == Api::Template)
                .then(|| shorten::would_cut(&value))
                .flatten();
            match cut {
                None => keywords::check(key, &value).map_err(|e| fail(e.to_string()))?,
                Some(cut) if values == Values::Strict => return Err(fail(format!("the value {cut}"))),
                Some(cut) => {
                    value = shorten::shorten(&value).unwrap_or(value);
                    shortened.push(key.clone());
                    keywords::check(key, &value).map_err(|e| fail(format!("{e} (shortened: the value {cut})")))?;
                }
            }
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
            shortened,
        })
    }

    /// Whether `template`'s deliveries for `app_id` wait for the user's consent: a subscribe
    /// template marked `consent = "tracked"`, or one of an app so marked that says nothing itself.
    pub fn tracks_consent(&self, template: &Template, app_id: &str) -> bool {
        let app = || self.apps.iter().find(|a| a.app_id == app_id).and_then(|a| a.consent);
        template.api == Api::Subscribe && template.consent.or_else(app) == Some(ConsentMode::Tracked)
    }
}

/// What rendering does with a template-message value WeChat would cut (line break, over 20
/// characters): refuse it (the start-up check of the samples) or shorten it (a real event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Values {
    Strict,
    Shorten,
}

/// MiniJinja's error with its cause, on one line.
fn describe(err: &minijinja::Error) -> String {
    crate::error_text::with_sources(err).replace('\n', " ")
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
    fn an_apps_rate_limit_is_read_and_checked() {
        let limited = GOOD.replace(
            "secret_env = \"WECHAT_APP_SECRET_2\"",
            "secret_env = \"WECHAT_APP_SECRET_2\"\nrate_limit = 30",
        );
        assert_eq!(Catalog::parse(&limited, "test").unwrap().apps[0].rate_limit, Some(30.0));
        assert_eq!(Catalog::parse(GOOD, "test").unwrap().apps[0].rate_limit, None);
        for bad in ["0", "-1", "1e9", "nan"] {
            let text = GOOD.replace(
                "secret_env = \"WECHAT_APP_SECRET_2\"",
                &format!("secret_env = \"WECHAT_APP_SECRET_2\"\nrate_limit = {bad}"),
            );
            let e = Catalog::parse(&text, "test").unwrap_err().to_string();
            assert!(e.contains("rate_limit must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_contract_example_loads_and_renders() {
        let c = Catalog::parse(GOOD, "test").unwrap();
        assert_eq!(c.apps.len(), 1);
        let t = c.find("wxdefault", "booking.confirmed")[0];
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐", "store": "徐汇店",
            "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}));
        let m = c.render(t, &e, "id".into()).unwrap();
        assert_eq!(m.data["amount5"], "39.80元");
        assert_eq!(m.data["time3"], "2026年11月22日 14:00");
        assert_eq!(m.url.as_deref(), Some("https://wash.example.com/bookings/B-1"));
        assert!(c.find("wxdefault", "booking.unknown").is_empty());
    }

    #[test]
    fn render_fails_on_missing_field_and_on_keyword_rules() {
        let c = Catalog::parse(GOOD, "test").unwrap();
        let t = c.find("wx", "booking.confirmed")[0];
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐"}));
        let err = c.render(t, &e, "id".into()).unwrap_err();
        assert!(err.field.starts_with("data."), "{err}");
        // A template-message value too long for its type even once shortened.
        let e = event(json!({"booking_id": "B-1", "service": "s", "store": "s",
            "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A1234567890", "price_cents": 1}));
        let err = c.render(t, &e, "id".into()).unwrap_err();
        assert_eq!(err.field, "data.car_number4");
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

    const REMINDER: &str = r#"
[[templates]]
event_type = "booking.confirmed"
template_id = "TPL_REMINDER"
send_at = "{{ data.slot_start | add_minutes(-60) }}"
not_after = "{{ data.slot_start }}"
quiet_hours = "22:00-08:00"
cancel_key = "{{ data.booking_id }}"
cancelled_by = ["booking.cancelled"]
[templates.data]
thing1 = "{{ data.service }}"

[[templates]]
event_type = "booking.cancelled"
template_id = "TPL_CANCELLED"
[templates.data]
thing1 = "{{ data.service }}"
"#;

    #[test]
    fn timing_renders_and_cancellers_are_found() {
        let c = Catalog::parse(&format!("{GOOD}{REMINDER}"), "t").unwrap();
        let ts = c.find("wx", "booking.confirmed");
        assert_eq!(ts.len(), 2, "two templates, two deliveries");
        assert!(!ts[0].is_held() && ts[1].is_held());
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐",
            "slot_start": "2026-11-22T14:00:00+08:00"}));
        let timing = c.timing(ts[1], &e).unwrap();
        assert_eq!(timing.send_at.unwrap().to_rfc3339(), "2026-11-22T05:00:00+00:00");
        assert_eq!(timing.not_after.unwrap().to_rfc3339(), "2026-11-22T06:00:00+00:00");
        assert_eq!(timing.cancel_key.as_deref(), Some("B-1"));
        let cancelled = c.cancelled_by("wx", "booking.cancelled");
        assert_eq!(cancelled.len(), 1);
        assert_eq!(cancelled[0].template_id, "TPL_REMINDER");
        assert!(c.cancelled_by("wx", "booking.confirmed").is_empty());
        assert_eq!(
            c.find_one("wx", "booking.confirmed", "TPL_REMINDER")
                .unwrap()
                .template_id,
            "TPL_REMINDER"
        );
    }

    #[test]
    fn bad_schedules_fail_at_boot_naming_the_template() {
        let both = format!("{GOOD}{REMINDER}");
        let cases = [
            (both.replace("add_minutes(-60) }}", "datetime('%H:%M') }}"), "send_at"),
            (
                both.replace(r#"not_after = "{{ data.slot_start }}""#, r#"not_after = "soon""#),
                "not_after",
            ),
            (both.replace("22:00-08:00", "22-8"), "quiet_hours"),
            (
                both.replace(r#"["booking.cancelled"]"#, r#"["booking.nope"]"#),
                "booking.nope",
            ),
            (
                both.replace(r#"cancel_key = "{{ data.booking_id }}""#, ""),
                "cancel_key",
            ),
            (
                both.replace("TPL_CANCELLED", "TPL_X")
                    .replace(
                        r#"event_type = "booking.cancelled""#,
                        r#"event_type = "booking.confirmed""#,
                    )
                    .replace("TPL_X", "TPL_REMINDER")
                    .replace(r#"["booking.cancelled"]"#, "[]"),
                "second template",
            ),
        ];
        for (text, needle) in cases {
            let err = Catalog::parse(&text, "t").unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains('#'), "{needle}: {err}");
        }
    }

    #[test]
    fn rules_of_2023_first_remark_and_colours_are_refused_with_the_reason() {
        let first = GOOD.replacen("thing1 = ", "first = \"您好\"\nthing1 = ", 1);
        let e = Catalog::parse(&first, "t").unwrap_err().to_string();
        assert!(e.contains("data.first") && e.contains("since 2023-05-04"), "{e}");
        let remark = GOOD.replacen("thing1 = ", "remark = \"谢谢\"\nthing1 = ", 1);
        assert!(
            Catalog::parse(&remark, "t")
                .unwrap_err()
                .to_string()
                .contains("data.remark")
        );
        let coloured = GOOD.replacen(
            r#"thing2 = "{{ data.store }}""#,
            r##"thing2 = { value = "{{ data.store }}", color = "#173177" }"##,
            1,
        );
        let e = Catalog::parse(&coloured, "t").unwrap_err().to_string();
        assert!(e.contains("data.thing2") && e.contains("colours"), "{e}");
        let top = GOOD.replacen("[templates.data]", "color = \"#FF0000\"\n[templates.data]", 1);
        let e = Catalog::parse(&top, "t").unwrap_err().to_string();
        assert!(e.contains("#1") && e.contains("colours"), "{e}");
    }

    #[test]
    fn a_template_message_sample_wechat_would_cut_fails_at_start_up() {
        // 25 characters: a fine character_string in a subscribe message, not in a template message.
        let id = "B-2026112200000000000001X";
        let file = |api: &str| {
            format!(
                "[[templates]]\nevent_type = \"booking.confirmed\"\ntemplate_id = \"TPL\"\napi = \"{api}\"\n\
                 sample = {{ data = {{ booking_id = \"{id}\" }} }}\n[templates.data]\n\
                 character_string1 = \"{{{{ data.booking_id }}}}\"\n"
            )
        };
        let e = Catalog::parse(&file("template"), "t").unwrap_err().to_string();
        assert!(
            e.contains("#1") && e.contains("data.character_string1") && e.contains("25 characters"),
            "{e}"
        );
        Catalog::parse(&file("subscribe"), "t").expect("25 characters are fine in a subscribe message");
        let line_break = GOOD.replacen(
            r#"thing2 = "{{ data.store }}""#,
            r#"thing2 = "{{ data.store }}\n欢迎光临""#,
            1,
        );
        let e = Catalog::parse(&line_break, "t").unwrap_err().to_string();
        assert!(e.contains("data.thing2") && e.contains("line break"), "{e}");
    }

    #[test]
    fn a_long_value_at_send_time_is_shortened_and_reported() {
        let c = Catalog::parse(GOOD, "test").unwrap();
        let t = c.find("wx", "booking.confirmed")[0];
        let store = "上海市徐汇区漕溪北路第一百八十八号汽车美容中心旗舰店总店"; // 28 characters
        let e = event(json!({"booking_id": "B-1", "service": "精洗套餐", "store": store,
            "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}));
        let m = c.render(t, &e, "id".into()).unwrap();
        assert_eq!(m.data["thing2"].chars().count(), 20);
        assert!(m.data["thing2"].ends_with('…'));
        assert_eq!(m.shortened, vec!["thing2".to_string()]);
        // A subscribe message keeps its type's own limit: a long `thing` still fails to render.
        let s = c.find("wx", "booking.reminder")[0];
        let e = event(json!({"booking_id": "B-1", "service": store, "slot_start": "2026-11-22T14:00:00+08:00"}));
        assert_eq!(c.render(s, &e, "id".into()).unwrap_err().field, "data.thing1");
    }

    #[test]
    fn consent_is_tracked_per_template_or_per_app_and_only_for_subscribe_messages() {
        let c = Catalog::parse(GOOD, "t").unwrap();
        let reminder = c.find("wx", "booking.reminder")[0];
        assert!(
            !c.tracks_consent(reminder, "wx2222222222222222"),
            "untracked by default"
        );
        let per_app = GOOD.replace(
            "secret_env = \"WECHAT_APP_SECRET_2\"",
            "secret_env = \"WECHAT_APP_SECRET_2\"\nconsent = \"tracked\"",
        );
        let c = Catalog::parse(&per_app, "t").unwrap();
        let reminder = c.find("wx", "booking.reminder")[0];
        let confirmed = c.find("wx", "booking.confirmed")[0];
        assert!(c.tracks_consent(reminder, "wx2222222222222222"));
        assert!(!c.tracks_consent(reminder, "wxother"), "another app");
        assert!(!c.tracks_consent(confirmed, "wx2222222222222222"), "a template message");
        let opted_out = per_app.replace(
            "miniprogram_state = \"formal\"",
            "miniprogram_state = \"formal\"\nconsent = \"untracked\"",
        );
        let c = Catalog::parse(&opted_out, "t").unwrap();
        assert!(!c.tracks_consent(c.find("wx", "booking.reminder")[0], "wx2222222222222222"));
        let on_template_message = GOOD.replacen("url = ", "consent = \"tracked\"\nurl = ", 1);
        let e = Catalog::parse(&on_template_message, "t").unwrap_err().to_string();
        assert!(e.contains("#1") && e.contains("subscribe"), "{e}");
    }

    #[test]
    fn platforms_are_listed_once_with_their_three_secrets_named() {
        let platform = |id: &str, token_env: &str| {
            format!(
                "\n[[platforms]]\ncomponent_appid = \"{id}\"\nsecret_env = \"S\"\ncallback_token_env = \"{token_env}\"\naes_key_env = \"K\"\n"
            )
        };
        let c = Catalog::parse(&format!("{GOOD}{}", platform("wx3333333333333333", "T")), "t").unwrap();
        assert_eq!(c.platforms[0].component_appid, "wx3333333333333333");
        for (text, needle) in [
            (
                format!("{GOOD}{}{}", platform("wx3", "T"), platform("wx3", "T")),
                "listed twice",
            ),
            (format!("{GOOD}{}", platform("wx2222222222222222", "T")), "both an app"),
            (format!("{GOOD}{}", platform("wx3", " ")), "callback_token_env is empty"),
            (format!("{GOOD}{}", platform(" ", "T")), "component_appid is empty"),
            (
                format!("{GOOD}\n[[platforms]]\ncomponent_appid = \"wx3\"\nsecret = \"x\"\n"),
                "unknown field",
            ),
        ] {
            let e = Catalog::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
