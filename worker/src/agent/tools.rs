//! What an agent can do, offered to the model through the provider's own tool calling: read,
//! write and list files of its workspace (a fresh directory; a path that leaves it is
//! refused), build the workspace's C sources on the swarm (a `BuildPlan` on
//! `<prefix>.build.submit`, diagnostics back as text), run a command in the native sandbox
//! over a copy of the workspace, and search the agent's knowledge base. Every refusal and
//! failure is a sentence the model reads and can act on, never an error of the run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vgas_client::api::{Swarm, REQUEST_TIMEOUT};
use vgas_shared::farm::{
    BuildPlan, BuildUpdate, EnvSpec, LinkSpec, PlanSegment, Source, TargetBinary,
};
use vgas_shared::kb::Bm25Index;
use vgas_shared::llm::ToolDef;
use vgas_shared::wire::{check_relative_path, InputFile, TaskKind, TaskOutcome, TaskSpec, Work};
use vgas_shared::Subjects;

use crate::sandbox::{self, Isolation, OutputChunk, SandboxConfig};

/// Most bytes of a file `read_file` returns, and of a command's output `run_command` returns:
/// the model's context is the scarce thing, not the disk.
pub const MAX_TOOL_TEXT: usize = 16 * 1024;

/// Largest file `write_file` accepts.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// Files a workspace may hold.
pub const MAX_WORKSPACE_FILES: usize = 256;

/// How long one build on the swarm may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// How long one `run_command` may take.
pub const COMMAND_DEADLINE_S: u64 = 60;

/// Chunks `search_kb` returns.
pub const KB_RESULTS: usize = 3;

/// The JSON Schema tool definitions of `names`, in that order.
pub fn definitions(names: &[String]) -> Vec<ToolDef> {
    names
        .iter()
        .filter_map(|n| {
            let (description, parameters) = match n.as_str() {
                "read_file" => (
                    "Read a file of the workspace.",
                    json!({"type":"object","properties":{"path":{"type":"string","description":"relative to the workspace"}},"required":["path"]}),
                ),
                "write_file" => (
                    "Create or replace a file of the workspace.",
                    json!({"type":"object","properties":{"path":{"type":"string","description":"relative to the workspace"},"content":{"type":"string"}},"required":["path","content"]}),
                ),
                "list_files" => (
                    "List the files of the workspace with their sizes.",
                    json!({"type":"object","properties":{}}),
                ),
                "build" => (
                    "Compile the workspace's C sources on the build farm and link one binary. Headers of the workspace (#include \"x.h\") are inlined; others must be system headers. Returns the compiler's diagnostics, or the binary's name.",
                    json!({"type":"object","properties":{"sources":{"type":"array","items":{"type":"string"},"description":"C files to compile (default: every .c file)"},"output":{"type":"string","description":"binary name (default app)"}}}),
                ),
                "run_command" => (
                    "Run a shell command (sh -c) in a sandbox holding a copy of the workspace; no network. Returns the exit code, stdout and stderr.",
                    json!({"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}),
                ),
                "search_kb" => (
                    "Search the knowledge base for passages relevant to a query.",
                    json!({"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}),
                ),
                _ => return None,
            };
            Some(ToolDef {
                name: n.clone(),
                description: description.into(),
                parameters,
            })
        })
        .collect()
}

/// What the last build did, for the pipeline.
#[derive(Debug, Clone, Default)]
pub struct BuildResult {
    pub ok: bool,
    /// The binary's workspace path when the build linked one.
    pub binary: Option<String>,
    /// The diagnostics (or the reason the build could not run), as the model saw them.
    pub text: String,
}

/// What the last command did, for the pipeline.
#[derive(Debug, Clone)]
pub struct CommandResult {
    pub command: String,
    pub exit_code: Option<i32>,
}

/// Everything a tool needs from the worker.
#[derive(Debug)]
pub struct Tools<'a> {
    pub dir: PathBuf,
    pub client: &'a async_nats::Client,
    pub subjects: &'a Subjects,
    pub sandbox: &'a SandboxConfig,
    pub isolation: &'a Isolation,
    pub slot: usize,
    pub kb: std::sync::Arc<Bm25Index>,
    pub cancel: CancellationToken,
    pub last_build: Option<BuildResult>,
    pub last_command: Option<CommandResult>,
    /// Role names allowed the tool being called (checked by the caller).
    pub allowed: Vec<String>,
}

fn arg<'v>(args: &'v Value, name: &str) -> Result<&'v str, String> {
    args.get(name).and_then(Value::as_str).ok_or_else(|| {
        format!("refused: the argument \"{name}\" (a string) is missing; call again with it")
    })
}

impl Tools<'_> {
    /// Runs the tool `name` with the model's raw `arguments`; the answer is for the model.
    pub async fn call(&mut self, name: &str, arguments: &str) -> String {
        if !self.allowed.iter().any(|t| t == name) {
            return format!(
                "refused: there is no tool \"{name}\" for this role; the tools are: {}",
                self.allowed.join(", ")
            );
        }
        let args: Value = match serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        }) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return "refused: the arguments must be a JSON object".into(),
            Err(e) => {
                return format!(
                    "refused: the arguments are not valid JSON ({e}); send one JSON object"
                )
            }
        };
        let r = match name {
            "read_file" => self.read_file(&args),
            "write_file" => self.write_file(&args),
            "list_files" => Ok(self.list_files()),
            "build" => Ok(self.build(&args).await),
            "run_command" => self.run_command(&args).await,
            "search_kb" => self.search_kb(&args),
            _ => Err(format!("refused: unknown tool \"{name}\"")),
        };
        r.unwrap_or_else(|e| e)
    }

    /// The workspace path of `rel`, or why it is refused.
    fn path(&self, rel: &str) -> Result<PathBuf, String> {
        check_relative_path(rel).map_err(|_| {
            format!(
                "refused: the path {rel:?} leaves the workspace or is not a plain relative \
                 path; use a path inside the workspace such as \"src/main.c\""
            )
        })?;
        let p = self.dir.join(rel);
        // No component may be a symlink (the workspace holds none, but a command cannot add one
        // either, as commands run on a copy).
        let mut at = self.dir.clone();
        for c in Path::new(rel).components() {
            at.push(c);
            if at
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(format!("refused: {rel:?} goes through a symlink"));
            }
        }
        Ok(p)
    }

    fn read_file(&self, args: &Value) -> Result<String, String> {
        let rel = arg(args, "path")?;
        let p = self.path(rel)?;
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {rel}: {e}"))?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if text.len() > MAX_TOOL_TEXT {
            text.truncate(text.floor_char_boundary(MAX_TOOL_TEXT));
            text.push_str("\n[... truncated]");
        }
        Ok(text)
    }

    fn write_file(&self, args: &Value) -> Result<String, String> {
        let rel = arg(args, "path")?;
        let content = arg(args, "content")?;
        let p = self.path(rel)?;
        if content.len() > MAX_WRITE_BYTES {
            return Err(format!(
                "refused: {rel} would be {} bytes; the limit is {MAX_WRITE_BYTES}",
                content.len()
            ));
        }
        if !p.exists() && self.files().len() >= MAX_WORKSPACE_FILES {
            return Err(format!(
                "refused: the workspace holds {MAX_WORKSPACE_FILES} files already"
            ));
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {rel}: {e}"))?;
        }
        std::fs::write(&p, content).map_err(|e| format!("cannot write {rel}: {e}"))?;
        Ok(format!("wrote {rel} ({} bytes)", content.len()))
    }

    /// Workspace files, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    if let Ok(rel) = e.path().strip_prefix(&self.dir) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn list_files(&self) -> String {
        let files = self.files();
        if files.is_empty() {
            return "the workspace is empty".into();
        }
        files
            .iter()
            .map(|f| {
                let len = std::fs::metadata(self.dir.join(f)).map_or(0, |m| m.len());
                format!("{f} ({len} bytes)")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn build(&mut self, args: &Value) -> String {
        let result = self.build_inner(args).await;
        let text = result.text.clone();
        self.last_build = Some(result);
        text
    }

    async fn build_inner(&self, args: &Value) -> BuildResult {
        let fail = |text: String| BuildResult {
            ok: false,
            binary: None,
            text,
        };
        let sources: Vec<String> = match args.get("sources").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => self
                .files()
                .into_iter()
                .filter(|f| f.ends_with(".c"))
                .collect(),
        };
        if sources.is_empty() {
            return fail("nothing to build: the workspace has no .c file".into());
        }
        let output = args
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or("app")
            .to_owned();
        if let Err(e) = self.path(&output) {
            return fail(e);
        }
        let mut segments = Vec::new();
        for s in &sources {
            let read = |rel: &str| {
                self.path(rel).and_then(|p| {
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read {rel}: {e}"))
                })
            };
            let text = match super::inline::inline_local_includes(s, &read) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            segments.push(PlanSegment {
                name: s.clone(),
                source: Source {
                    text: Some(text),
                    ..Default::default()
                },
                language: Default::default(),
                args: Vec::new(),
            });
        }
        let plan = BuildPlan {
            compiler: EnvSpec {
                toolchain: "gcc".into(),
                ..Default::default()
            },
            args: vec!["-O2".into()],
            segments,
            link: Some(LinkSpec {
                output: output.clone(),
                args: vec!["-lm".into()],
            }),
            ..Default::default()
        };
        match self.submit_plan(plan).await {
            Ok(BuildUpdate::Finished {
                exit_code,
                binary,
                report,
                ..
            }) => {
                let diagnostics: String = report
                    .items
                    .iter()
                    .map(|d| {
                        format!(
                            "{}:{}:{}: {}: {}\n{}",
                            d.file, d.line, d.column, d.severity, d.message, d.context
                        )
                    })
                    .collect();
                if exit_code != 0 {
                    return fail(format!(
                        "the build failed ({} errors, {} warnings):\n{diagnostics}",
                        report.errors, report.warnings
                    ));
                }
                let Some(binary) = binary.filter(|b| b.object.is_some()) else {
                    return fail("the build succeeded but linked no binary".into());
                };
                match self.fetch(&binary, &output).await {
                    Ok(size) => BuildResult {
                        ok: true,
                        binary: Some(output.clone()),
                        text: format!(
                            "the build succeeded: ./{output} ({size} bytes){}",
                            if diagnostics.is_empty() {
                                String::new()
                            } else {
                                format!("\nwarnings:\n{diagnostics}")
                            }
                        ),
                    },
                    Err(e) => fail(format!("the build succeeded but its binary is lost: {e}")),
                }
            }
            Ok(_) => fail("the build ended without a result".into()),
            Err(e) => fail(format!("the build could not run: {e}")),
        }
    }

    /// The swarm, through the task API every caller uses.
    fn swarm(&self) -> Swarm {
        Swarm::new(self.client.clone(), self.subjects.clone())
    }

    /// Submits `plan` and waits for its `finished` update.
    async fn submit_plan(&self, plan: BuildPlan) -> Result<BuildUpdate, String> {
        let wait = async {
            let following = self
                .swarm()
                .submit_plan(plan, REQUEST_TIMEOUT)
                .await
                .map_err(|e| format!("submit: {e:#}"))?;
            following.finish(|_| {}).await.map_err(|e| format!("{e:#}"))
        };
        tokio::select! {
            r = tokio::time::timeout(BUILD_TIMEOUT, wait) => r.map_err(|_| format!("no result within {} s", BUILD_TIMEOUT.as_secs()))?,
            _ = self.cancel.cancelled() => Err("cancelled".into()),
        }
    }

    /// Downloads the build's binary to workspace path `rel` (mode 0755); its size.
    async fn fetch(&self, binary: &TargetBinary, rel: &str) -> Result<u64, String> {
        let p = self.path(rel)?;
        self.swarm()
            .fetch_binary(binary, &p)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(binary.size)
    }

    async fn run_command(&mut self, args: &Value) -> Result<String, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let command = arg(args, "command")?.to_owned();
        let mut files = Vec::new();
        for rel in self.files() {
            let p = self.dir.join(&rel);
            let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {rel}: {e}"))?;
            let mode = std::fs::metadata(&p).map_or(0o644, |m| m.permissions().mode() & 0o777);
            files.push(InputFile {
                path: rel,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                mode: Some(mode),
                ..Default::default()
            });
        }
        let spec = TaskSpec {
            kind: TaskKind::Exec,
            cmd: vec!["sh".into(), "-c".into(), command.clone()],
            files,
            deadline_s: Some(COMMAND_DEADLINE_S),
            ..Default::default()
        };
        let task = spec
            .parse()
            .map_err(|e| format!("the command cannot run: {e}"))?;
        let Work::Exec(exec) = &task.work else {
            return Err("the command cannot run: not an exec task".into());
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(vgas_shared::limits::EVENT_CHANNEL_CAPACITY);
        let collect = async {
            let (mut out, mut err) = (String::new(), String::new());
            while let Some(c) = rx.recv().await {
                match c {
                    OutputChunk::Stdout(s) => push_capped(&mut out, &s),
                    OutputChunk::Stderr(s) => push_capped(&mut err, &s),
                }
            }
            (out, err)
        };
        let run = sandbox::run_exec(
            self.sandbox,
            self.isolation,
            self.slot,
            sandbox::Job {
                task: exec,
                bounds: &task.bounds,
            },
            None,
            tx,
            self.cancel.child_token(),
        );
        let (outcome, (out, err)) = tokio::join!(run, collect);
        let exit_code = match &outcome {
            TaskOutcome::Exited { exit_code } => Some(*exit_code),
            _ => None,
        };
        self.last_command = Some(CommandResult {
            command: command.clone(),
            exit_code,
        });
        Ok(format!(
            "{}\nstdout:\n{out}\nstderr:\n{err}",
            outcome.describe()
        ))
    }

    fn search_kb(&self, args: &Value) -> Result<String, String> {
        let query = arg(args, "query")?;
        let hits = self.kb.search(query, KB_RESULTS);
        if hits.is_empty() {
            return Ok("no passage of the knowledge base matches".into());
        }
        Ok(hits
            .iter()
            .map(|(score, c)| format!("[{} #{} score {score:.2}]\n{}", c.source, c.index, c.text))
            .collect::<Vec<_>>()
            .join("\n\n"))
    }
}

/// Appends `s` to `buf` up to [`MAX_TOOL_TEXT`].
fn push_capped(buf: &mut String, s: &str) {
    let room = MAX_TOOL_TEXT.saturating_sub(buf.len());
    if room == 0 {
        return;
    }
    if s.len() <= room {
        buf.push_str(s);
    } else {
        buf.push_str(&s[..s.floor_char_boundary(room)]);
        buf.push_str("\n[... truncated]");
    }
}
