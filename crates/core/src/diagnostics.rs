//! Problems found in a template, each with a stable code, a location and a fix.
//!
//! Validation never stops at the first problem: it returns every diagnostic it
//! can find so an author fixes a file in one pass. Codes are stable (`TPL0xxx`)
//! and documented in `docs/error-codes.md`, so scripts and people can rely on them.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable code, e.g. `TPL0005`.
    pub code: &'static str,
    /// JSON path into the template, e.g. `$.blocks[3].inputs.depends[0].block`.
    pub path: String,
    /// The block the problem belongs to, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// 1-based line and column, known for syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            path: path.into(),
            block: None,
            line: None,
            column: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(
        code: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, path, message)
        }
    }

    pub fn in_block(mut self, block: impl Into<String>) -> Self {
        let block = block.into();
        if !block.is_empty() {
            self.block = Some(block);
        }
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic for a terminal, prefixed with the file name.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{severity}[{}]: {file}", self.code));
        if let (Some(line), Some(column)) = (self.line, self.column) {
            out.push_str(&format!(":{line}:{column}"));
        }
        out.push_str(&format!(": {}", self.path));
        if let Some(block) = &self.block {
            out.push_str(&format!(" (block `{block}`)"));
        }
        out.push_str(&format!(": {}", self.message));
        if let Some(help) = &self.help {
            out.push_str(&format!("\n  help: {help}"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("<template>"))
    }
}

/// The codes, one place, so they stay unique.
pub mod codes {
    pub const SYNTAX: &str = "TPL0001";
    pub const SCHEMA: &str = "TPL0002";
    pub const UNKNOWN_FIELD: &str = "TPL0003";
    pub const STATE_IN_TEMPLATE: &str = "TPL0004";
    pub const DUPLICATE_BLOCK: &str = "TPL0005";
    pub const BAD_ID: &str = "TPL0006";
    pub const MISSING_BLOCK: &str = "TPL0007";
    pub const MISSING_ARTIFACT: &str = "TPL0008";
    pub const SELF_DEPENDENCY: &str = "TPL0009";
    pub const CYCLE: &str = "TPL0010";
    pub const DUPLICATE_KEY: &str = "TPL0011";
    pub const BAD_PATH: &str = "TPL0012";
    pub const THRESHOLD_METRIC: &str = "TPL0013";
    pub const RUNTIME_CONFIG: &str = "TPL0014";
    pub const AUTONOMY_PROFILE: &str = "TPL0015";
    pub const PARALLEL_GROUP: &str = "TPL0016";
    pub const DUPLICATE_DEPENDENCY: &str = "TPL0017";
    pub const EMPTY_TEMPLATE: &str = "TPL0018";
    pub const RETRIES_UNUSED: &str = "TPL0019";
    pub const BAD_ENV_NAME: &str = "TPL0020";
    pub const PARAM: &str = "TPL0021";
    pub const AUDIT: &str = "TPL0022";
    pub const FILE_PATTERN: &str = "TPL0023";
    pub const ANY_MODE: &str = "TPL0024";
    pub const CONVERGENCE: &str = "TPL0025";
    pub const TRIGGER: &str = "TPL0026";
    pub const RECORD_STATE: &str = "TPL0027";
    pub const NOT_SUPPORTED_YET: &str = "TPL0028";
    pub const STREAM: &str = "TPL0029";
    pub const CACHE: &str = "TPL0030";
    pub const FAN_OUT: &str = "TPL0031";
    pub const LENS: &str = "TPL0032";
    pub const LAYER_ORDER: &str = "TPL0033";
}
