//! The kvctl command line: put, get, del and status against a cluster, with
//! causal sessions that span commands and nodes.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kvctl::session_file::SessionFile;
use kvctl::{Client, Error, Transport};
use vclock_proto::{GetResponse, PutResponse, Value, Write};

const DEFAULT_NODES: &str = "http://127.0.0.1:5001,http://127.0.0.1:5002,http://127.0.0.1:5003";

/// Client of the causally consistent key-value store.
///
/// Nodes are tried in order until one answers. With --session NAME, the
/// session's causal context is kept in a file, so that a later command of the
/// same session, at any node, sees everything the earlier ones did.
///
/// Exit codes: 0 ok, 1 key not found, 2 usage error, 3 no node reachable,
/// 4 the server refused the request.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_help = EXAMPLES)]
struct Cli {
    /// A node URL; repeat for several (tried in order).
    #[arg(long = "node", short = 'n', value_name = "URL", env = "KVCTL_NODES",
          value_delimiter = ',', default_value = DEFAULT_NODES, global = true)]
    nodes: Vec<String>,

    /// Keep this session's causal context across commands (in
    /// $XDG_STATE_HOME/kvctl/sessions/NAME.json).
    #[arg(long, short, value_name = "NAME", env = "KVCTL_SESSION", global = true)]
    session: Option<String>,

    /// Output format: plain (values only, for scripts), table (for people) or json.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    /// Timeout of each request, e.g. 10s or 500ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", global = true)]
    timeout: Duration,

    /// Bearer token of the client API (the nodes' client_token), sent with
    /// every request.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KVCTL_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  kvctl put greeting '\"hello\"'              # a JSON string
  kvctl put count 5                          # the number 5
  kvctl put doc --file doc.json              # a value from a file (- for stdin)
  kvctl get greeting                         # every sibling, as a table
  kvctl -o plain get count                   # just the value
  kvctl --session s -n http://127.0.0.1:5001 put k 1
  kvctl --session s -n http://127.0.0.1:5003 get k   # sees 1 or newer
  kvctl del greeting
  kvctl status                               # every node's clock, buffer and lag";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Plain,
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a value: JSON if VALUE parses as JSON, else a string.
    #[command(
        after_help = "Examples:\n  kvctl put k 42\n  kvctl put k 'plain text'\n  kvctl put k '{\"a\":[1,2]}'\n  kvctl put k --file value.json\n  echo '[1,2,3]' | kvctl put k --file -"
    )]
    Put {
        /// The key.
        key: String,
        /// The value (omit with --file). Negative numbers are values, not options.
        #[arg(
            required_unless_present = "file",
            conflicts_with = "file",
            allow_negative_numbers = true
        )]
        value: Option<String>,
        /// Read the value from a file, or from standard input with -.
        #[arg(long, short, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Read a key: the value, and every concurrent sibling.
    #[command(
        after_help = "Examples:\n  kvctl get k\n  kvctl -o plain get k\n  kvctl -o json get k"
    )]
    Get {
        /// The key.
        key: String,
    },
    /// Transactions over several keys.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Delete a key (a tombstone that replaces what the node has applied).
    #[command(after_help = "Example:\n  kvctl del k")]
    Del {
        /// The key.
        key: String,
    },
    /// Show every node's applied clock, buffered events and replication lag.
    #[command(after_help = "Examples:\n  kvctl status\n  kvctl -o json status")]
    Status,
    /// Show and change the cluster's members while it runs.
    Cluster(ClusterArgs),
    /// Check the cluster for causal-consistency violations: run concurrent
    /// sessions of unique writes and reads at random nodes, wait until every node
    /// has the same clock, read every key everywhere, then check the history.
    /// Exits 1 when it finds a violation or the nodes do not converge.
    #[command(
        after_help = "Examples:\n  kvctl check\n  kvctl check --api compat --sessions 16 --ops 500 --history run.json\n  kvctl check --txn\n  kvctl check --replay run.json"
    )]
    Check(CheckArgs),
    /// Write every node's trace as one log to open in ShiViz.
    ///
    /// Reads the trace each --node keeps in memory (a node keeps one when
    /// started with KVNODE_TRACE_BUFFER=N; cargo xtask cluster does) and writes
    /// one ShiViz log: the regular expression that reads it, an empty line, then
    /// a line per record, `node "description" {clock}`, in an order consistent
    /// with causality. The clocks are ShiViz's: each node's own entry counts its
    /// lines, and a receive merges the clock of its send, so that ShiViz draws
    /// the message. The store's applied clock is in each description.
    ///
    /// To view it, open https://bestchai.bitbucket.io/shiviz/, click "Try out
    /// ShiViz" and upload the file (ShiViz takes the regular expression from its
    /// first line); or paste the first line into "Log parsing regular
    /// expression" and the lines after the empty one into the log box.
    ///
    /// With -o json, writes each record as JSON on a line instead, in the same
    /// order. Nodes that keep no trace are skipped with a warning; exits 4 when
    /// none keeps one.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Measure throughput, latency percentiles (p50 to max) and errors of a
    /// workload, and the visibility lag between nodes. Connections are spread
    /// round-robin over the nodes. Exits 1 when any request failed.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(kvctl::bench::BenchArgs),
}

/// `kvctl cluster ...`.
#[derive(Debug, clap::Args)]
#[command(after_help = CLUSTER_EXAMPLES)]
struct ClusterArgs {
    /// The cluster secret (the nodes' cluster_secret): membership routes
    /// need it when the nodes have one.
    #[arg(
        long,
        value_name = "SECRET",
        env = "KVCTL_CLUSTER_SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,
    #[command(subcommand)]
    command: ClusterCommand,
}

const CLUSTER_EXAMPLES: &str = "Examples:
  kvctl cluster status                        # members, their state and clocks
  kvctl cluster add node4=http://10.0.0.4:5000
                                              # then start node4 with NODES naming
                                              # the cluster's nodes and itself
  kvctl -n http://127.0.0.1:5001 cluster remove node3
  kvctl cluster replace node2 http://10.0.0.9:5000
                                              # same id, new machine: it recovers
                                              # node2's history from its peers";

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Every member (removed ones too), its URL, and what it says of itself:
    /// live, checking or bootstrapping (with keys copied), or unreachable.
    /// Exits 1 when a member is not live or holds another membership.
    Status,
    /// Add a node. Its id must never have been used in this cluster. Start
    /// the node with the cluster's nodes (itself included) as its node list:
    /// it copies a snapshot from a peer, catches up, then serves.
    Add {
        /// The new node, as ID=URL.
        #[arg(value_name = "ID=URL", value_parser = parse_assignment)]
        member: (String, String),
    },
    /// Remove a node (ask another one). Its writes are kept; no node sends
    /// to it any more and it takes no writes.
    Remove {
        /// The node's id.
        id: String,
    },
    /// Move a node to a new URL (a replacement machine, same id). The node
    /// there recovers the id's history from its peers before it serves.
    Replace {
        /// The node's id.
        id: String,
        /// Its new URL.
        url: String,
    },
}

/// `kvctl txn ...`.
#[derive(Debug, Subcommand)]
enum TxnCommand {
    /// Read several keys from one causally consistent cut of a node's state
    /// (a snapshot): no key shows a write without the writes it depends on
    /// that the others show. Exits 1 when a key is not found.
    #[command(
        after_help = "Examples:\n  kvctl txn get post comments\n  kvctl -o plain txn get a b c\n  kvctl --session s txn get a b"
    )]
    Get {
        /// The keys, each once.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
    },
    /// Write several keys as one atomic transaction: one dot, applied whole
    /// at every node, so no reader ever sees part of it.
    #[command(
        after_help = "Each KEY=VALUE is split at its first =; VALUE is JSON if it parses as JSON, else a string.\n\nExamples:\n  kvctl txn put post='{\"title\":\"hi\"}' comments='[]'\n  kvctl txn put a=1 b=2 --del c\n  kvctl --session s txn put balance=90 ledger/7=-10"
    )]
    Put {
        /// The puts, as KEY=VALUE.
        #[arg(value_name = "KEY=VALUE", value_parser = parse_assignment, allow_negative_numbers = true)]
        puts: Vec<(String, String)>,
        /// Keys to delete in the same transaction (repeat for several).
        #[arg(long = "del", value_name = "KEY")]
        deletes: Vec<String>,
    },
}

/// Splits `KEY=VALUE` at its first `=`.
fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("{text:?} has an empty key")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

const BENCH_EXAMPLES: &str = "Examples:
  kvctl bench health -c 64                   # the HTTP ceiling: GET /health
  kvctl bench write -c 64 -d 30s             # POST /write of random keys
  kvctl bench read --keys 1000 -r 100000     # writes the 1000 keys, then reads them
  kvctl bench mixed --read-ratio 0.9 --sessions
  kvctl bench --lag --lag-samples 500        # visibility lag only
  kvctl -o json bench write -d 5s            # one JSON object (BenchReport)";

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Operations per session.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Number of keys the sessions share (few keys: more conflicts).
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// The API: native (contexts on reads and writes) or compat (the prototype's).
    #[arg(long, value_enum, default_value_t = CheckApi::Native)]
    api: CheckApi,
    /// Share of writes, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    write_ratio: f64,
    /// Half of the reads are snapshot reads of 2 to 4 keys (POST
    /// /v1/txn/read, native API), each checked as a causally consistent cut,
    /// and half of the writes atomic writes of 2 to 4 keys (POST
    /// /v1/txn/write), each checked for being seen whole.
    #[arg(long, conflicts_with = "replay")]
    txn: bool,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long to wait for the nodes to converge at the end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    quiesce_timeout: std::time::Duration,
    /// Save the history as JSON to this file.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Check a saved history instead of running a workload (no cluster needed).
    #[arg(long, value_name = "FILE", conflicts_with = "history")]
    replay: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CheckApi {
    Native,
    Compat,
}

const TRACE_EXAMPLES: &str = "Examples:
  kvctl trace -f run.log                     # then upload run.log to ShiViz
  kvctl trace --follow -f live.log           # until Ctrl-C
  kvctl -o json trace | jq -c 'select(.kind == \"buffered\")'";

#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// Keep writing records as the nodes make them, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Write the log to this file instead of standard output.
    #[arg(long, short, value_name = "PATH")]
    file: Option<PathBuf>,
    /// With --follow: how long a receive waits for the record of its send
    /// (from another node's stream) before it is written without it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s", value_name = "DURATION")]
    wait: Duration,
}

/// Exit codes.
mod exit {
    pub const NOT_FOUND: u8 = 1;
    pub const UNREACHABLE: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const LOCAL: u8 = 5;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The benchmark runs its own runtimes, one per thread, so it runs outside this one.
    let result = match &cli.command {
        Command::Bench(args) => bench(&cli, args),
        _ => actix_rt::System::new().block_on(run(cli)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("kvctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Unreachable(_) => exit::UNREACHABLE,
            Error::Refused { .. } => exit::REFUSED,
            Error::InvalidValue(_) => 2,
        };
        let hint = match e {
            Error::Refused { status: 401, .. } => {
                " (give the nodes' client_token with --token or KVCTL_TOKEN)"
            }
            _ => "",
        };
        Failure {
            code,
            message: format!("{e}{hint}"),
        }
    }
}

fn local(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: exit::LOCAL,
        message: message.to_string(),
    }
}

/// How every command reaches the nodes: the timeout and the token.
fn transport(cli: &Cli) -> Transport {
    Transport::new()
        .with_timeout(cli.timeout)
        .with_optional_token(cli.token.clone())
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let client = Client::new(cli.nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()))
        .with_transport(transport(&cli));
    if client.nodes().is_empty() {
        return Err(Failure {
            code: 2,
            message: "no node given (--node URL or KVCTL_NODES)".into(),
        });
    }
    let session = match &cli.session {
        Some(name) => Some(SessionFile::open(name).map_err(local)?),
        None => None,
    };
    let context = match &session {
        Some(s) => Some(s.load().map_err(local)?),
        None => None,
    };
    let (code, seen) = match &cli.command {
        Command::Put { key, value, file } => {
            let value = read_value(value.as_deref(), file.as_deref())?;
            let answer = client.put(key, value, context.as_ref()).await?;
            print_put(cli.output, &answer);
            (0, Some(answer.timestamp))
        }
        Command::Del { key } => {
            let answer = client.delete(key, context.as_ref()).await?;
            print_put(cli.output, &answer);
            (0, Some(answer.timestamp))
        }
        Command::Get { key } => {
            let answer = client.get(key, context.as_ref()).await?;
            print_get(cli.output, &answer);
            let code = if answer.found { 0 } else { exit::NOT_FOUND };
            (code, Some(answer.context))
        }
        Command::Txn(TxnCommand::Get { keys }) => {
            let answer = client.txn_read(keys, context.as_ref()).await?;
            match cli.output {
                Output::Json => {
                    println!("{}", serde_json::to_string(&answer).expect("serialisable"))
                }
                Output::Plain => {
                    for read in &answer.reads {
                        let value = if read.found {
                            display_value(&read.value)
                        } else {
                            String::new()
                        };
                        println!("{}\t{value}", read.key);
                    }
                }
                Output::Table => {
                    println!("snapshot at {}", answer.context);
                    for read in &answer.reads {
                        print_get(Output::Table, read);
                    }
                }
            }
            let code = if answer.reads.iter().all(|r| r.found) {
                0
            } else {
                exit::NOT_FOUND
            };
            (code, Some(answer.context))
        }
        Command::Txn(TxnCommand::Put { puts, deletes }) => {
            let puts = puts
                .iter()
                .map(|(k, v)| Write::put(k, kvctl::parse_value(v)));
            let writes: Vec<Write> = puts.chain(deletes.iter().map(Write::delete)).collect();
            if writes.is_empty() {
                return Err(Failure {
                    code: 2,
                    message: "nothing to write: give KEY=VALUE or --del KEY".into(),
                });
            }
            let answer = client.txn_write(&writes, context.as_ref()).await?;
            print_put(cli.output, &answer);
            (0, Some(answer.timestamp))
        }
        Command::Status => (status(&client, cli.output).await?, None),
        Command::Cluster(args) => (cluster(&cli, &client, args).await?, None),
        Command::Check(args) => (check(&client, args, cli.output).await?, None),
        Command::Trace(args) => (trace(&client, args, cli.output).await?, None),
        Command::Bench(_) => unreachable!("main runs the benchmark outside the runtime"),
    };
    if let (Some(session), Some(seen)) = (&session, seen) {
        session.merge(&seen).map_err(local)?;
    }
    Ok(code)
}

fn read_value(text: Option<&str>, file: Option<&std::path::Path>) -> Result<Value, Failure> {
    let text = match (text, file) {
        (Some(text), _) => text.to_owned(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = String::new();
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| local(format!("reading standard input: {e}")))?;
            buf
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| local(format!("reading {}: {e}", path.display())))?,
        (None, None) => unreachable!("clap requires a value or --file"),
    };
    Ok(kvctl::parse_value(&text))
}

/// A value for people and scripts: strings without quotes, the rest as the
/// JSON text the node sent. Only a string is decoded, so a value nested at any
/// depth is shown as it is (and so is a string with an escape no Rust string
/// holds, such as a lone surrogate).
fn display_value(value: &Value) -> String {
    serde_json::from_str::<String>(value.json()).unwrap_or_else(|_| value.json().to_owned())
}

fn print_put(output: Output, answer: &PutResponse) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(answer).expect("serialisable")),
        Output::Plain => println!("{}", answer.dot),
        Output::Table => println!("ok  {}  timestamp {}", answer.dot, answer.timestamp),
    }
}

fn print_get(output: Output, answer: &GetResponse) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(answer).expect("serialisable")),
        Output::Plain => {
            if answer.found {
                println!("{}", display_value(&answer.value));
            }
            if answer.siblings.len() > 1 {
                eprintln!(
                    "kvctl: {} has {} concurrent siblings; this is the winner (see -o table)",
                    answer.key,
                    answer.siblings.len()
                );
            }
        }
        Output::Table => {
            if answer.siblings.is_empty() {
                println!("{}: not found (context {})", answer.key, answer.context);
                return;
            }
            if answer.siblings.len() > 1 {
                println!(
                    "{}: {} concurrent siblings; a put with this context replaces them all",
                    answer.key,
                    answer.siblings.len()
                );
            }
            println!("{:<8} {:<12} {:<32} VALUE", "", "DOT", "TIMESTAMP");
            let winner = answer.siblings.iter().rposition(|s| !s.deleted);
            for (i, s) in answer.siblings.iter().enumerate().rev() {
                let mark = if Some(i) == winner { "winner" } else { "" };
                let value = if s.deleted {
                    "(deleted)".to_owned()
                } else {
                    display_value(&s.value)
                };
                println!(
                    "{mark:<8} {:<12} {:<32} {value}",
                    s.dot.to_string(),
                    s.timestamp.to_string()
                );
            }
            println!("context {}", answer.context);
        }
    }
}

async fn check(client: &Client, args: &CheckArgs, output: Output) -> Result<u8, Failure> {
    use kvctl::check::{self, Api, Outcome};

    let history = match &args.replay {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| local(format!("reading {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| local(format!("{} is not a history: {e}", path.display())))?
        }
        None => {
            if !(0.0..=1.0).contains(&args.write_ratio) {
                return Err(Failure {
                    code: 2,
                    message: "--write-ratio must be between 0 and 1".into(),
                });
            }
            let workload = check::Workload {
                nodes: client.nodes().to_vec(),
                api: match args.api {
                    CheckApi::Native => Api::Native,
                    CheckApi::Compat => Api::Compat,
                },
                sessions: args.sessions.max(1),
                ops_per_session: args.ops,
                keys: args.keys,
                write_ratio: args.write_ratio,
                timeout: client.transport().timeout(),
                quiesce_timeout: args.quiesce_timeout,
                seed: args.seed,
                token: client.transport().token().map(str::to_owned),
            };
            let mix = if args.txn {
                check::Mix::txn()
            } else {
                check::Mix::default()
            };
            let history = check::run_with(&workload, mix).await;
            if history.ops.iter().all(|o| o.outcome != Outcome::Ok) {
                let errors: Vec<(String, String)> = history
                    .ops
                    .iter()
                    .take(3)
                    .map(|o| (o.node.clone(), o.error.clone().unwrap_or_default()))
                    .collect();
                return Err(Error::Unreachable(errors).into());
            }
            history
        }
    };
    if let Some(path) = &args.history {
        let text = serde_json::to_string_pretty(&history).expect("histories serialise");
        std::fs::write(path, text)
            .map_err(|e| local(format!("writing {}: {e}", path.display())))?;
    }
    let report = check::check(&history);
    let count = |o: Outcome| history.ops.iter().filter(|op| op.outcome == o).count();
    let converged = match report.converged {
        Some(true) => "yes",
        Some(false) => "no",
        None if history.quiescent => "yes",
        None => "no (the nodes did not reach the same clock in time)",
    };
    let mut snapshots = String::new();
    if report.snapshots_checked > 0 {
        snapshots += &format!(" snapshots_checked={}", report.snapshots_checked);
    }
    if report.atomic_writes > 0 {
        snapshots += &format!(" atomic_writes={}", report.atomic_writes);
    }
    let summary = format!(
        "ops={} ok={} failed={} unknown={} reads_checked={}{snapshots} violations={} converged={converged}",
        history.ops.len(),
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Unknown),
        report.reads_checked,
        report.violations.len(),
    );
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"summary": summary, "report": report})
        ),
        Output::Plain | Output::Table => {
            for v in report.violations.iter().take(50) {
                println!("VIOLATION {v}");
            }
            if report.violations.len() > 50 {
                println!("... and {} more", report.violations.len() - 50);
            }
            println!("{summary}");
        }
    }
    let ok = report.violations.is_empty() && converged == "yes";
    Ok(if ok { 0 } else { 1 })
}

/// `kvctl bench`: runs the benchmark and prints its report; 1 when any request failed.
fn bench(cli: &Cli, args: &kvctl::bench::BenchArgs) -> Result<u8, Failure> {
    use kvctl::bench::BenchError;

    let to_failure = |e: BenchError| match e {
        BenchError::Invalid(message) => Failure { code: 2, message },
        BenchError::Client(e) => e.into(),
        BenchError::Failed(message) => local(message),
    };
    let config = args
        .to_config(cli.nodes.clone(), &transport(cli))
        .map_err(to_failure)?;
    let report = kvctl::bench::run(&config).map_err(to_failure)?;
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(&report).expect("reports serialise")
        ),
        Output::Plain | Output::Table => print!("{}", report.to_text()),
    }
    Ok(if report.failures() > 0 { 1 } else { 0 })
}

/// `kvctl trace`: every node's trace as one ShiViz log (or JSON lines).
async fn trace(client: &Client, args: &TraceArgs, output: Output) -> Result<u8, Failure> {
    use kvctl::trace::{self, Format, TraceError, TraceOptions};

    let options = TraceOptions {
        nodes: client.nodes().to_vec(),
        token: client.transport().token().map(str::to_owned),
        timeout: client.transport().timeout(),
        format: match output {
            Output::Json => Format::Json,
            Output::Plain | Output::Table => Format::Shiviz,
        },
        max_wait: args.wait,
    };
    let mut out: Box<dyn std::io::Write> = match &args.file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| local(format!("creating {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut warn = |message: &str| eprintln!("kvctl: warning: {message}");
    let result = if args.follow {
        trace::follow(&options, &mut out, &mut warn).await
    } else {
        trace::snapshot(&options, &mut out, &mut warn)
            .await
            .map(drop)
    };
    match result {
        Ok(()) => Ok(0),
        // The reader went away (`kvctl trace | head`): not a failure.
        Err(TraceError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(TraceError::Write(e)) => Err(local(format!("writing the trace: {e}"))),
        Err(TraceError::Client(e)) => Err(e.into()),
        Err(e @ TraceError::Off(_)) => Err(Failure {
            code: exit::REFUSED,
            message: e.to_string(),
        }),
    }
}

async fn cluster(cli: &Cli, client: &Client, args: &ClusterArgs) -> Result<u8, Failure> {
    let admin = client
        .clone()
        .with_transport(transport(cli).with_optional_token(args.cluster_secret.clone()));
    let changed = match &args.command {
        ClusterCommand::Status => return cluster_status(client, &admin, cli.output).await,
        ClusterCommand::Add { member: (id, url) } => admin.add_member(id, url).await?,
        ClusterCommand::Remove { id } => admin.remove_member(id).await?,
        ClusterCommand::Replace { id, url } => admin.replace_member(id, url).await?,
    };
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string(&changed).expect("serialisable")),
        Output::Plain | Output::Table => {
            println!("membership version {} at {}", changed.version, changed.node);
            for m in &changed.members {
                let state = if m.removed { "removed" } else { "member" };
                println!("{:<12} {:<8} {}", m.id, state, m.url);
            }
        }
    }
    Ok(0)
}

/// `kvctl cluster status`: the membership, and each member's own view.
async fn cluster_status(client: &Client, admin: &Client, output: Output) -> Result<u8, Failure> {
    let members = admin.members().await?;
    let mut rows = Vec::new();
    let mut healthy = true;
    for m in &members.members {
        let status = if m.removed {
            None
        } else {
            Some(client.status_of(&m.url).await)
        };
        healthy &= match &status {
            None => true,
            Some(Ok(s)) => s.recovery.phase == "live" && s.members_version == members.version,
            Some(Err(_)) => false,
        };
        rows.push((m, status));
    }
    match output {
        Output::Json => {
            let doc: Vec<serde_json::Value> = rows
                .iter()
                .map(|(m, status)| match status {
                    None => serde_json::json!({"member": m}),
                    Some(Ok(s)) => serde_json::json!({"member": m, "status": s}),
                    Some(Err(e)) => serde_json::json!({"member": m, "error": e.to_string()}),
                })
                .collect();
            let doc = serde_json::json!({"version": members.version, "members": doc});
            println!("{doc}");
        }
        Output::Plain | Output::Table => {
            println!(
                "membership version {} (from {})",
                members.version, members.node
            );
            println!(
                "{:<12} {:<26} {:<14} {:>7} APPLIED",
                "NODE", "URL", "STATE", "VERSION"
            );
            for (m, status) in &rows {
                match status {
                    None => println!("{:<12} {:<26} {:<14} {:>7} -", m.id, m.url, "removed", "-"),
                    Some(Ok(s)) => {
                        let state = match s.recovery.phase.as_str() {
                            "bootstrapping" => {
                                format!("joining {}k", s.recovery.keys_copied / 1000)
                            }
                            phase => phase.to_owned(),
                        };
                        println!(
                            "{:<12} {:<26} {:<14} {:>7} {}",
                            m.id, m.url, state, s.members_version, s.applied
                        );
                        if let Some(why) = &s.recovery.waiting_for {
                            println!("{:<12} {why}", "");
                        }
                    }
                    Some(Err(e)) => {
                        println!(
                            "{:<12} {:<26} {:<14} {:>7} {e}",
                            m.id, m.url, "unreachable", "-"
                        )
                    }
                }
            }
        }
    }
    Ok(if healthy { 0 } else { exit::NOT_FOUND })
}

async fn status(client: &Client, output: Output) -> Result<u8, Failure> {
    let mut rows = Vec::new();
    let mut reached = 0;
    for url in client.nodes() {
        let result = client.status_of(url).await;
        reached += usize::from(result.is_ok());
        rows.push((url.clone(), result));
    }
    match output {
        Output::Json => {
            let doc: Vec<serde_json::Value> = rows
                .iter()
                .map(|(url, r)| match r {
                    Ok(s) => serde_json::json!({"url": url, "status": s}),
                    Err(e) => serde_json::json!({"url": url, "error": e.to_string()}),
                })
                .collect();
            println!("{}", serde_json::Value::Array(doc));
        }
        Output::Plain | Output::Table => {
            println!(
                "{:<26} {:<8} {:<36} {:>8} {:>8} LAG",
                "URL", "NODE", "APPLIED", "BUFFERED", "LOG"
            );
            for (url, r) in &rows {
                match r {
                    Ok(s) => {
                        let lag: Vec<String> = s
                            .peers
                            .iter()
                            .map(|p| {
                                let state = if p.paused {
                                    " paused"
                                } else if !p.reachable {
                                    " unreachable"
                                } else {
                                    ""
                                };
                                format!("{}={}{state}", p.node, p.lag)
                            })
                            .collect();
                        println!(
                            "{url:<26} {:<8} {:<36} {:>8} {:>8} {}",
                            s.node,
                            s.applied.to_string(),
                            s.buffered_total,
                            s.log_len,
                            lag.join(" ")
                        );
                        // Shown only when the node does not serve writes yet.
                        if let Some(why) = &s.recovery.waiting_for {
                            println!(
                                "{:<26} {}: {} keys copied; {why}",
                                "", s.recovery.phase, s.recovery.keys_copied
                            );
                        }
                    }
                    Err(Error::Unreachable(tried)) => {
                        let why: Vec<&str> = tried.iter().map(|(_, why)| why.as_str()).collect();
                        println!("{url:<26} unreachable: {}", why.join("; "));
                    }
                    Err(Error::Refused {
                        status, message, ..
                    }) => println!("{url:<26} refused ({status}): {message}"),
                    Err(e) => println!("{url:<26} {e}"),
                }
            }
            // The membership, as the node that holds the highest version has it.
            let newest = rows
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .max_by_key(|s| s.members_version);
            if let Some(s) = newest.filter(|s| !s.members.is_empty()) {
                let ids = |removed: bool| -> Vec<&str> {
                    s.members
                        .iter()
                        .filter(|m| m.removed == removed)
                        .map(|m| m.id.as_str())
                        .collect()
                };
                let (active, removed) = (ids(false), ids(true));
                let removed = if removed.is_empty() {
                    String::new()
                } else {
                    format!("; removed: {}", removed.join(" "))
                };
                println!(
                    "members (version {}, as {} holds them): {}{removed}",
                    s.members_version,
                    s.node,
                    active.join(" ")
                );
            }
        }
    }
    if reached == 0 {
        // No node answered: a refusal says more than the nodes that could not
        // be reached.
        let mut tried = Vec::new();
        for (url, result) in rows {
            match result {
                Err(refused @ Error::Refused { .. }) => return Err(refused.into()),
                Err(Error::Unreachable(why)) => tried.extend(why),
                Err(e) => tried.push((url, e.to_string())),
                Ok(_) => {}
            }
        }
        return Err(Error::Unreachable(tried).into());
    }
    Ok(0)
}
