//! Command-line grammar.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "factory",
    version,
    about = "Process Factory: run auditable multi-step pipelines from JSON templates",
    after_help = "Exit codes: 0 done or waiting at a gate; 1 the run failed; 2 invalid input (template, params, run or block); 3 storage or internal error."
)]
pub struct Cli {
    /// Store: a SQLite file path (default factory.db) or postgres://user@host/db
    #[arg(long, global = true, env = "FACTORY_DB", default_value = "factory.db")]
    pub db: String,

    /// Settings file: LLM providers and, for `serve` and `worker`,
    /// notifications (default: factory.toml in the current directory, if any)
    #[arg(long, global = true, env = "FACTORY_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Who is acting, recorded in the event log (default: cli:$USER)
    #[arg(long, global = true, env = "FACTORY_ACTOR")]
    pub actor: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Text,
    Mermaid,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct DriveArgs {
    /// Blocks of a run running at once, across all workers (0: no limit;
    /// default 8). `factory run` records it in the run, so every worker keeps
    /// it; for other commands it is the limit of runs that recorded none
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<u32>,
    /// Blocks this process runs at once, across all the runs it drives (0: no limit)
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Backoff before the first automatic retry, doubling each retry
    #[arg(long, default_value_t = 1000)]
    pub retry_backoff_ms: u64,
    /// How long a worker's claim on a running block lasts without renewal
    #[arg(long, default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Root for per-attempt working directories
    #[arg(long, env = "FACTORY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep the working directories of successful attempts too
    #[arg(long)]
    pub keep_work: bool,
    /// Print nothing but the run id and errors
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check templates; report every problem with file, JSON path and block
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print diagnostics as JSON
        #[arg(long)]
        json: bool,
    },
    /// Draw a template's DAG by layer
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Print the template JSON Schema generated from the engine's types
    Schema,
    /// Create a run and drive it until it is done, failed or waiting at a gate
    Run {
        template: PathBuf,
        /// Run parameter, repeatable: --param expert_name="Ada Lovelace"
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Autonomy profile defined in the template
        #[arg(long)]
        autonomy: Option<String>,
        /// Per-block autonomy for this run only, repeatable: --set-autonomy clone-tester=auto
        #[arg(long = "set-autonomy", value_name = "BLOCK=gate|guided|auto")]
        overrides: Vec<String>,
        /// Model for one llm block in this run only, repeatable: --model clone-compiler=opus
        #[arg(long = "model", value_name = "BLOCK=MODEL")]
        models: Vec<String>,
        /// Model for this run's llm blocks that name none (alias or provider:model)
        #[arg(long)]
        default_model: Option<String>,
        /// Sampling for this run's llm blocks that set none, repeatable:
        /// --llm temperature=0.2 --llm seed=7 (temperature, top_p, seed, stop)
        #[arg(long = "llm", value_name = "KEY=VALUE")]
        sampling: Vec<String>,
        /// Run every block anew: no earlier accepted attempt with the same
        /// inputs stands in for one (memoized attempts)
        #[arg(long)]
        no_cache: bool,
        /// Only create the run; do not execute anything
        #[arg(long)]
        no_run: bool,
        /// Upload a file with the run (repeatable), under its file name:
        /// blocks whose `inputs.files` patterns match the name read it
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// List runs, newest first
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a run: its status and, per block, status, attempts, score, error, timings
    Status {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Version-over-version table of a run's feedback loop (automated score,
    /// expert approval, extraction accuracy, open critical/high items) and
    /// whether the current version is ready to ship; exit 4 when it is not
    Convergence {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a run's event log
    Events {
        run: String,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Approve the gate a block waits at, then continue the run
    Approve {
        run: String,
        block: String,
        #[arg(long)]
        note: Option<String>,
        /// Record the decision only; do not continue the run
        #[arg(long)]
        no_run: bool,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Reject the gate with feedback; the block re-runs with it as corrections
    Reject {
        run: String,
        block: String,
        #[arg(long, required = true)]
        feedback: String,
        #[arg(long)]
        no_run: bool,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Rate a lens output of a run, 1–5, after using it: a perspective
    /// (`perspective[positioning]`) or the aggregate. Rating the same output
    /// again replaces your rating. Templates with `lens.feedback_loop` read
    /// ratings when a run starts (see README, "Rated feedback")
    Rate {
        run: String,
        block: String,
        /// 1 (useless) to 5 (very useful)
        #[arg(long)]
        score: i64,
        /// What was useful or missing; the next runs' prompts quote it
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Ratings of a run (RUN), or of every run of a template (--template),
    /// with what a new run would start from for an aggregate key
    Ratings {
        /// A run id (or prefix)
        #[arg(required_unless_present = "template", conflicts_with = "template")]
        run: Option<String>,
        /// A template id: summaries per block, perspective and aggregate key
        #[arg(long)]
        template: Option<String>,
        /// One JSON object per rating
        #[arg(long)]
        json: bool,
    },
    /// A run's gaps (found by a block with `outputs.gaps`, such as
    /// clone-factory's gap-analyzer): open, addressed (by which block, and
    /// why) or accepted (by whom)
    Gaps {
        /// A run id (or prefix)
        run: String,
        /// One JSON object per gap
        #[arg(long)]
        json: bool,
    },
    /// The notification outbox, newest first: what was sent where, what is
    /// still trying and why ([notifications] in factory.toml; `factory
    /// serve` and `factory worker` send them)
    Notifications {
        /// `pending`, `delivered` or `failed`
        #[arg(long)]
        status: Option<String>,
        /// Only this run's (an id or prefix)
        #[arg(long)]
        run: Option<String>,
        /// Only this channel's
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Send this failed notification again (its id, `ntf-SEQ-CHANNEL`)
        #[arg(long, conflicts_with_all = ["status", "run", "channel"])]
        retry: Option<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Ask the factory about a run (the META chat): the run's brief — blocks,
    /// audits, gaps, corrections, convergence — goes to the run's model with
    /// the question; question and answer are kept with the run's chat
    Ask {
        /// A run id (or prefix)
        run: String,
        /// The question (omit with --brief)
        #[arg(required_unless_present = "brief")]
        question: Option<String>,
        /// Print the brief the model would be given, and ask nothing
        #[arg(long, conflicts_with = "question")]
        brief: bool,
    },
    /// Accept a gap (a hole the clone consciously lives with) or reopen it
    Gap {
        /// A run id (or prefix)
        run: String,
        /// The gap's id, e.g. g01
        id: String,
        #[arg(long, conflicts_with = "reopen", required_unless_present = "reopen")]
        accept: bool,
        #[arg(long)]
        reopen: bool,
        /// Why (kept with the decision)
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Audit a run with the factory itself (templates/meta-audit-factory.json):
    /// run and block D1–D5, specificity, wiring, deltas against the template's
    /// previous run, and an HTML scorecard that waits at its gate
    MetaAudit {
        /// The run to audit (id or unique prefix)
        run: String,
        /// Compare with this run instead of the template's previous run
        #[arg(long)]
        baseline: Option<String>,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Continue a run, re-running blocks whose worker died
    Resume {
        run: String,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Re-run a failed or done block and everything downstream of it
    Retry {
        run: String,
        block: String,
        #[arg(long)]
        no_run: bool,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// List a block's artifacts per attempt, print one, or diff two attempts
    Artifacts {
        run: String,
        block: String,
        /// Print this artifact's content
        #[arg(long)]
        key: Option<String>,
        /// Attempt number (default: the latest successful one)
        #[arg(long)]
        attempt: Option<u32>,
        /// Unified diff of the artifacts of two attempts
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<u32>>,
    },
    /// Score files with the D1–D5 audit (no run, no network)
    Audit(AuditArgs),
    /// Check the LLM set-up: probe each configured provider (models, context
    /// window) and, for a template, what its blocks need that is missing
    Doctor {
        /// A template whose blocks' providers, keys and env vars to check
        template: Option<std::path::PathBuf>,
    },
    /// Print the exact prompt an llm block sent (or would send now)
    Prompt {
        run: String,
        block: String,
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Print an attempt's stdout and stderr
    Logs {
        run: String,
        block: String,
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Serve the JSON API and the workbench, and run blocks, in one process
    Serve(ServeArgs),
    /// Serve every run of the store until SIGTERM: claim ready blocks, run
    /// them, hand them back if stopped. Start several (on several machines,
    /// against one PostgreSQL) and `factory serve --workers 0` for the API
    Worker(WorkerArgs),
    /// Time the engine on a run of no-op blocks of a given shape and size
    /// (wall time, cost per block, run document size, peak memory)
    Bench(BenchArgs),
    /// Manage API tokens (stored as hashes in the database)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Records of a stream template: counts per state, the records, one
    /// record's history (--key), a failed record's retry (--retry)
    Records {
        /// The stream template's id
        template: String,
        /// Only records in this state
        #[arg(long)]
        state: Option<String>,
        /// Only records with this status: ready, failed or done
        #[arg(long)]
        status: Option<String>,
        /// Show this record: its data and history
        #[arg(long, conflicts_with = "retry")]
        key: Option<String>,
        /// Retry this failed record (its stage takes it again)
        #[arg(long)]
        retry: Option<String>,
        /// Add the record in this JSON file (- for stdin) through the
        /// template's manual intake; needs --from
        #[arg(long, requires = "from", conflicts_with_all = ["key", "retry"])]
        add: Option<PathBuf>,
        /// The stream template's file, for --add
        #[arg(long)]
        from: Option<PathBuf>,
        /// The manual intake block, for --add when the template has several
        #[arg(long)]
        block: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Webhook helpers: a new secret, and signed headers for a body
    #[command(subcommand)]
    Hook(HookCommand),
    /// The factory's event feed (what `event` triggers wait for), newest
    /// first; with --template, also that template's recent trigger firings
    Feed {
        /// Only events of this name, or of names starting with it when it
        /// ends in `.` (e.g. `record.`)
        #[arg(long)]
        name: Option<String>,
        /// Only events of this template
        #[arg(long)]
        template: Option<String>,
        /// Only events of this run
        #[arg(long)]
        run: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
        /// Remove events, webhook receipts and finished trigger firings
        /// older than this many days (1 or more), and say how many went
        #[arg(long, conflicts_with_all = ["name", "template", "run"],
              value_parser = clap::value_parser!(u32).range(1..))]
        prune_days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Print a new random secret (`whsec_…`) for a webhook trigger's `secret_env`
    Secret,
    /// Print the Standard Webhooks headers that sign BODY (a file, or - for stdin)
    Sign {
        body: PathBuf,
        /// The environment variable holding the secret (as the trigger's `secret_env`)
        #[arg(long)]
        secret_env: String,
        /// The delivery's id (default: a new `msg_…`)
        #[arg(long)]
        id: Option<String>,
        /// Seconds since the epoch (default: now)
        #[arg(long)]
        timestamp: Option<i64>,
        /// Print them as curl `-H` arguments
        #[arg(long)]
        curl: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `chain` (each block after the one before), `fan` (a root, N-2 blocks
    /// after it, one block joining them) or `stream` (records through a
    /// stream template of no-op steps, fed by signed webhooks)
    #[arg(long, default_value = "chain")]
    pub shape: String,
    /// Blocks in the run
    #[arg(long, default_value_t = 40)]
    pub blocks: usize,
    /// The store to run on: an empty database URL (`postgres://…`); default a
    /// fresh SQLite file in a temporary folder
    #[arg(long)]
    pub store: Option<String>,
    /// Blocks run at once (0: no limit), as `factory run --slots`
    #[arg(long, default_value_t = 0)]
    pub slots: usize,
    /// Each block sleeps this long instead of doing nothing (a builtin
    /// `sleep`: time without processor use)
    #[arg(long, default_value_t = 0)]
    pub sleep_ms: u64,
    /// Run the blocks in this many `factory worker` processes (each with
    /// `--slots`) instead of in this one; needs --store. Reports the blocks
    /// each worker ran and fails if any block started twice or any worker
    /// did not exit 0 on SIGTERM
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// `--shape stream`: records delivered (signed webhooks) and taken
    /// through four states
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// `--shape stream`: records each stage takes at once
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// `--shape stream`: keep-alive connections delivering at once
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Runs this process drives at once
    #[arg(long, default_value_t = 64)]
    pub runs: usize,
    /// Milliseconds between looks for running runs (PostgreSQL also
    /// notifies every commit; then this is only a safety net, every 5 s)
    #[arg(long, default_value_t = 500)]
    pub scan_ms: u64,
    /// Seconds shutdown waits for running blocks before handing them back
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Serve this worker's Prometheus metrics at http://ADDR/metrics (claims,
    /// lease losses, conflicts, queue depth, attempt durations); port 0 picks one
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also run the stream templates of this folder (and those registered in
    /// the store): their stages and cron intakes, beside other processes
    /// running the same ones
    #[arg(long)]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port and prints it)
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: std::net::SocketAddr,
    /// Runs this process drives at once (0: none; leave them to `factory worker`s)
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Accept requests without a token (refused unless the address is loopback)
    #[arg(long)]
    pub no_auth: bool,
    /// Folder of template JSON files offered in the "new run" form
    #[arg(long, default_value = "templates")]
    pub templates: PathBuf,
    /// Seconds shutdown waits for running blocks before handing them back
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Largest file a run may be created with, in MiB (larger: 413 file_too_large)
    #[arg(long, default_value_t = 10)]
    pub max_upload_mb: usize,
    /// Largest run-creation request, files included (base64), in MiB
    #[arg(long, default_value_t = 64)]
    pub max_request_mb: usize,
    /// Days the event feed, webhook receipts and trigger firings are kept
    /// (pruned hourly; 0 keeps them)
    #[arg(long, default_value_t = 7)]
    pub feed_retention_days: u32,
    #[command(flatten)]
    pub drive: DriveArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once
    Create {
        #[arg(long)]
        role: String,
        /// Shown in the event log as `user:<name>`
        #[arg(long, default_value = "cli")]
        name: String,
        /// The weight its reviews count with: expert, product_lead,
        /// tech_lead, team or external (without one the token cannot vote)
        #[arg(long)]
        tester_role: Option<String>,
    },
    /// List tokens (never their secrets)
    List,
    /// Revoke a token by its id (the `pf_…` prefix `list` shows)
    Revoke { id: String },
    /// Invite a tester to review a run: a token bound to the run and tester,
    /// printed as one link per review page
    Review {
        run: String,
        #[arg(long)]
        tester: String,
        /// expert, product_lead, tech_lead, team or external
        #[arg(long)]
        tester_role: String,
        /// Where `factory serve` is reached, prefixed to the links
        #[arg(long, default_value = "http://127.0.0.1:7700")]
        base_url: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Golden example(s), paired with the artifact of the same file name
    #[arg(long)]
    pub golden: Vec<PathBuf>,
    /// Upstream input file(s) the artifacts should build on (D5)
    #[arg(long, num_args = 1..)]
    pub upstream: Vec<PathBuf>,
    /// The subject's name (e.g. the expert), for specificity (D2)
    #[arg(long)]
    pub subject: Option<String>,
    /// The producer's own score, 0–10, for the calibration warning
    #[arg(long)]
    pub self_score: Option<f64>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Show every check per dimension: what was judged, what was n/a, which
    /// check cost the most, and how the composite and any cap were reached
    #[arg(long, conflicts_with = "json")]
    pub explain: bool,
    /// Exit with status 1 when the composite is below this
    #[arg(long)]
    pub min: Option<f64>,
}
