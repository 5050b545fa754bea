//! CSV download of every table on the pages: a page fetched with `?format=csv&tabell=N` answers
//! with its N-th table (1-based) as CSV — `;`-separated like the PVK export files, UTF-8 with a
//! byte-order mark so spreadsheet tools read å, ä, ö, the header row first, the same texts the
//! page shows (names, not only ids). Every table on a page fetched with GET gets a download link
//! below it. Works on the rendered page, so a table and its CSV never disagree and no page needs
//! its own CSV code; pages shown after a POST (identities revealed with a reason) get no link,
//! and their GET form shows no identities.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use regex::Regex;
use std::sync::OnceLock;

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid pattern"))
}

fn tables_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"(?s)<table\b.*?</table>")
}

/// The visible text of an HTML fragment (forms, captions and markup removed, entities decoded).
fn text_of(html: &str) -> String {
    static FORMS: OnceLock<Regex> = OnceLock::new();
    static TAGS: OnceLock<Regex> = OnceLock::new();
    let s = re(&FORMS, r"(?s)<form\b.*?</form>|<svg\b.*?</svg>").replace_all(html, " ");
    let s = re(&TAGS, r"(?s)<[^>]*>").replace_all(&s, " ");
    let s = s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#x27;", "'").replace("&#39;", "'").replace("&amp;", "&");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The N-th table (1-based) of a page as CSV rows: the header cells, then one line per body row.
pub fn table_csv(html: &str, n: usize) -> Option<String> {
    static ROWS: OnceLock<Regex> = OnceLock::new();
    static CELLS: OnceLock<Regex> = OnceLock::new();
    static CAPTION: OnceLock<Regex> = OnceLock::new();
    let table = tables_re().find_iter(html).nth(n.checked_sub(1)?)?.as_str();
    let table = re(&CAPTION, r"(?s)<caption\b.*?</caption>").replace(table, "");
    let mut out = String::from("\u{feff}");
    for row in re(&ROWS, r"(?s)<tr\b.*?</tr>").find_iter(&table) {
        let cells: Vec<String> = re(&CELLS, r"(?s)<t[hd]\b.*?</t[hd]>").find_iter(row.as_str()).map(|c| crate::sinks::export::csv::field(&text_of(c.as_str()))).collect();
        out.push_str(&cells.join(";"));
        out.push_str("\r\n");
    }
    Some(out)
}

/// Each table followed by its download link (`path` is the page's path and query).
pub fn add_links(html: &str, path_and_query: &str) -> String {
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let mut out = String::with_capacity(html.len() + 256);
    let mut last = 0;
    for (i, m) in tables_re().find_iter(html).enumerate() {
        out.push_str(&html[last..m.end()]);
        let href = format!("{path_and_query}{sep}format=csv&tabell={}", i + 1).replace('&', "&amp;");
        out.push_str(&format!("<p class=\"csv small\"><a href=\"{href}\" download>Ladda ner tabellen som CSV</a></p>"));
        last = m.end();
    }
    out.push_str(&html[last..]);
    out
}

fn csv_request(query: Option<&str>) -> Option<usize> {
    let mut csv = false;
    let mut n = 1;
    for (k, v) in form_urlencoded::parse(query?.as_bytes()) {
        match (&*k, &*v) {
            ("format", "csv") => csv = true,
            ("tabell", v) => n = v.parse().ok()?,
            _ => {}
        }
    }
    csv.then_some(n)
}

/// The middleware: CSV for `?format=csv`, download links on every other HTML page got by GET.
pub async fn tables(req: Request, next: Next) -> Response {
    let is_get = req.method() == Method::GET && !req.uri().path().starts_with("/api/");
    let want_csv = csv_request(req.uri().query());
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let page = req.uri().path().trim_matches('/').replace('/', "-");
    let res = next.run(req).await;
    let html = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    if !is_get || !html || res.status() != StatusCode::OK {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    parts.headers.remove(header::CONTENT_LENGTH);
    match want_csv {
        Some(n) => match table_csv(&text, n) {
            Some(csv) => {
                parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
                let name = format!("attachment; filename=\"{}-tabell-{n}.csv\"", if page.is_empty() { "oversikt".to_string() } else { page });
                if let Ok(v) = HeaderValue::from_str(&name) {
                    parts.headers.insert(header::CONTENT_DISPOSITION, v);
                }
                Response::from_parts(parts, Body::from(csv))
            }
            None => super::super::Fail::NotFound.page(),
        },
        None => {
            let base = path_and_query.split('?').next().unwrap_or("").to_string();
            // Links repeat the page's own filters.
            let pq = if path_and_query.contains('?') { path_and_query.clone() } else { base };
            Response::from_parts(parts, Body::from(add_links(&text, &pq)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_becomes_csv_with_its_header() {
        let html = r#"<table><caption>X</caption><thead><tr><th scope="col">Enhet</th><th scope="col">Andel</th></tr></thead>
            <tbody><tr><td>Vårdcentralen Åsen (SE1)</td><td>12 %</td></tr><tr><td>A &amp; B; C</td><td><form><button>Gör</button></form>3</td></tr></tbody></table>"#;
        assert_eq!(table_csv(html, 1).unwrap(), "\u{feff}Enhet;Andel\r\nVårdcentralen Åsen (SE1);12 %\r\n\"A & B; C\";3\r\n");
        assert!(table_csv(html, 2).is_none());
        assert!(add_links(html, "/pvk?unit=SE1").contains("href=\"/pvk?unit=SE1&amp;format=csv&amp;tabell=1\""));
    }
}
