//! What a command prints: a table (comfy-table) for people, or JSON for scripts; colour only
//! when stdout is a terminal.
//!
//! Owns: [`Output`].
//!
//! Invariant: results go to stdout, everything else (progress, prompts, warnings) to stderr.

use std::io::IsTerminal;

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// JSON instead of tables.
    pub(crate) json: bool,
    /// Whether stdout is a terminal (colour, box drawing).
    pub(crate) terminal: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output { json, terminal: std::io::stdout().is_terminal() }
    }

    /// A table with `header`, ready for rows.
    pub(crate) fn table(&self, header: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(if self.terminal { UTF8_FULL_CONDENSED } else { ASCII_MARKDOWN });
        table.set_content_arrangement(if self.terminal {
            ContentArrangement::Dynamic
        } else {
            ContentArrangement::Disabled
        });
        table.set_header(header.iter().copied());
        table
    }

    /// Prints `value` as pretty JSON.
    pub(crate) fn print_json(&self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("busctl: cannot print JSON: {error}"),
        }
    }

    /// `text` in green (good) or red (bad) on a terminal, plain otherwise.
    pub(crate) fn verdict(&self, good: bool, text: &str) -> String {
        if !self.terminal {
            return text.to_owned();
        }
        let colour = if good { 32 } else { 31 };
        format!("\x1b[{colour}m{text}\x1b[0m")
    }
}
