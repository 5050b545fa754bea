//! Plain-text tables for the commands' human output (`inspect`, the `demo` summary): columns
//! as wide as their widest cell (counted in characters, so å, ä and ö line up), a rule under
//! the header, numbers right-aligned.

/// A table being filled row by row; [`Table::render`] lays it out.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named by `header`; a name starting with `>` is right-aligned (the `>` is dropped).
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.trim_start_matches('>').to_string()).collect(),
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            rows: vec![],
        }
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells.into_iter().map(|c| c.to_string().replace(['\n', '\r'], " ")).collect();
        r.resize(self.header.len(), String::new());
        self.rows.push(r);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, each indented by `indent` spaces, without trailing blanks.
    pub fn render(&self, indent: usize) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.header.len()).map(|i| self.rows.iter().map(|r| width(&r[i])).chain([width(&self.header[i])]).max().unwrap_or(0)).collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = " ".repeat(widths[i] - width(c));
                    if self.right[i] {
                        format!("{pad}{c}")
                    } else {
                        format!("{c}{pad}")
                    }
                })
                .collect();
            format!("{}{}", " ".repeat(indent), parts.join("  ").trim_end())
        };
        let mut out = vec![line(&self.header)];
        out.push(format!("{}{}", " ".repeat(indent), widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ")));
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_line_up_with_swedish_letters_and_numbers_to_the_right() {
        let mut t = Table::new(&["enhet", ">poster"]);
        t.row(["Fysioterapi Åmål", "3"]);
        t.row(["FT01", "120"]);
        let text = t.render(2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  enhet             poster");
        assert_eq!(lines[1], "  ----------------  ------");
        assert_eq!(lines[2], "  Fysioterapi Åmål       3");
        assert_eq!(lines[3], "  FT01                 120");
    }
}
