//! Generated sections inside hand-written Markdown pages.
//!
//! A results page mixes tables that programs regenerate (the study, a compression run) with
//! prose written by people. Each generated part sits between two HTML comments,
//! `<!-- begin:ID -->` and `<!-- end:ID -->`, invisible when rendered; regenerating one part
//! replaces only the text between its markers and keeps the rest of the page.

/// The marker lines of the section `id`.
fn markers(id: &str) -> (String, String) {
    (format!("<!-- begin:{id} -->"), format!("<!-- end:{id} -->"))
}

/// Returns `document` with the section `id` holding `body`: the text between the section's
/// markers is replaced, or, when the page has no such section yet, the section is appended at
/// the end. Markers that are unpaired or out of order are left alone and a new section is
/// appended, so nothing written by hand is ever lost.
///
/// ```
/// let page = "# Results\n\nProse.\n";
/// let once = hdr_metrics::splice_section(page, "study", "| a |\n");
/// let twice = hdr_metrics::splice_section(&once, "study", "| b |\n");
/// assert!(twice.starts_with("# Results\n\nProse.\n"));
/// assert!(twice.contains("| b |") && !twice.contains("| a |"));
/// ```
pub fn splice_section(document: &str, id: &str, body: &str) -> String {
    let (begin, end) = markers(id);
    let body = if body.ends_with('\n') || body.is_empty() {
        body.to_string()
    } else {
        format!("{body}\n")
    };
    if let Some(b) = document.find(&begin) {
        let content_start = b + begin.len();
        if let Some(e) = document[content_start..].find(&end) {
            let e = content_start + e;
            return format!("{}{begin}\n{body}{}", &document[..b], &document[e..]);
        }
    }
    let mut out = document.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!("{begin}\n{body}{end}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section() {
        let page = "# R\n\nintro\n\n<!-- begin:a -->\nold a\n<!-- end:a -->\n\nmiddle\n\n\
                    <!-- begin:b -->\nold b\n<!-- end:b -->\ntail\n";
        let out = splice_section(page, "a", "new a");
        assert_eq!(
            out,
            "# R\n\nintro\n\n<!-- begin:a -->\nnew a\n<!-- end:a -->\n\nmiddle\n\n\
             <!-- begin:b -->\nold b\n<!-- end:b -->\ntail\n"
        );
        assert_eq!(splice_section(&out, "a", "new a"), out, "idempotent");
    }

    #[test]
    fn appends_a_missing_section_and_keeps_broken_markers() {
        assert_eq!(
            splice_section("", "s", "x\n"),
            "<!-- begin:s -->\nx\n<!-- end:s -->\n"
        );
        let broken = "text\n<!-- begin:s -->\nhalf";
        let out = splice_section(broken, "s", "y");
        assert!(out.starts_with(broken), "hand-written text kept");
        assert!(out.ends_with("<!-- begin:s -->\ny\n<!-- end:s -->\n"));
    }

    #[test]
    fn ids_are_exact() {
        let page = "<!-- begin:study-x -->\nkeep\n<!-- end:study-x -->\n";
        let out = splice_section(page, "study", "new");
        assert!(out.contains("keep"));
        assert!(out.contains("<!-- begin:study -->\nnew\n<!-- end:study -->"));
    }
}
