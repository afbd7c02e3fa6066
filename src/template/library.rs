//! Templates from WeChat's template library (docs/interface.md §10, "Templates per merchant"): a
//! template that names `library_id` and `keywords` instead of a fixed `template_id` is added to
//! each merchant's account (`api_add_template`), which gives it that account's own id. In the
//! ledger, reports and metrics the template is known by its `library_id`.

use super::file::TemplateSpec;
use crate::wechat::Api;

/// A category template of WeChat's library, as the templates file asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Library {
    /// WeChat's `template_id_short`.
    pub library_id: String,
    /// The keyword names (`keyword_name_list`), in order.
    pub keywords: Vec<String>,
}

/// Checks how `spec` names its template and fills `spec.template_id` with the name it is known
/// by: its `template_id`, or its `library_id`. `Some` for a library template.
pub(crate) fn identify(spec: &mut TemplateSpec) -> Result<Option<Library>, String> {
    let Some(library_id) = spec.library_id.clone() else {
        if !spec.keywords.is_empty() {
            return Err("`keywords` belong to a `library_id`".into());
        }
        return Ok(None);
    };
    if !spec.template_id.is_empty() {
        return Err("give either `template_id` or `library_id`, not both".into());
    }
    if library_id.trim().is_empty() {
        return Err("`library_id` must not be empty".into());
    }
    if spec.api != Api::Template {
        return Err(
            "`library_id` is for template messages (api = \"template\"): WeChat adds library \
             templates to an official account with api_add_template"
                .into(),
        );
    }
    if spec.keywords.is_empty() || spec.keywords.iter().any(|k| k.trim().is_empty()) {
        return Err(
            "`keywords` must list the library template's keyword names (WeChat requires them since 2023)".into(),
        );
    }
    spec.template_id.clone_from(&library_id);
    Ok(Some(Library {
        library_id,
        keywords: spec.keywords.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use crate::template::Catalog;

    const PLATFORM: &str = "\n[[platforms]]\ncomponent_appid = \"wx9999999999999999\"\nsecret_env = \"S\"\n\
                            callback_token_env = \"T\"\naes_key_env = \"K\"\n";

    fn file(naming: &str, extra: &str) -> String {
        format!(
            "[[templates]]\nevent_type = \"booking.confirmed\"\n{naming}\n\
             [templates.data]\nthing1 = \"{{{{ data.service }}}}\"\n{extra}"
        )
    }

    fn refusal(text: &str) -> String {
        Catalog::parse(text, "t.toml").expect_err("refused").to_string()
    }

    #[test]
    fn a_library_template_is_known_by_its_library_id() {
        let text = file("library_id = \"OPENTM1\"\nkeywords = [\"服务项目\"]", PLATFORM);
        let catalog = Catalog::parse(&text, "t.toml").unwrap();
        let libraries: Vec<_> = catalog.libraries().collect();
        assert_eq!(libraries.len(), 1);
        assert_eq!(libraries[0].keywords, ["服务项目"]);
        assert_eq!(
            catalog.find_one("wxM", "booking.confirmed", "OPENTM1").unwrap().label,
            "#1 (booking.confirmed → OPENTM1)"
        );
    }

    #[test]
    fn a_library_template_is_refused_where_it_cannot_work() {
        let cases = [
            (
                file("library_id = \"OPENTM1\"\nkeywords = [\"a\"]", ""),
                "needs a [[platforms]]",
            ),
            (file("library_id = \"OPENTM1\"", PLATFORM), "`keywords` must list"),
            (
                file(
                    "template_id = \"T\"\nlibrary_id = \"OPENTM1\"\nkeywords = [\"a\"]",
                    PLATFORM,
                ),
                "not both",
            ),
            (
                file("template_id = \"T\"\nkeywords = [\"a\"]", PLATFORM),
                "belong to a `library_id`",
            ),
            (
                file(
                    "library_id = \"OPENTM1\"\nkeywords = [\"a\"]\napi = \"subscribe\"",
                    PLATFORM,
                ),
                "for template messages",
            ),
        ];
        for (text, expected) in cases {
            let error = refusal(&text);
            assert!(error.contains(expected), "{error} (expected {expected:?})");
        }
    }
}
