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
