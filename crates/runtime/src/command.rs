//! The `command` runtime: a subprocess with a documented contract.
//!
//! Layout of an attempt directory:
//!
//! ```text
//! <attempt_dir>/work/            cwd of the process (fresh, empty)
//! <attempt_dir>/out/             FACTORY_OUTPUT_DIR: write each artifact at its `path`
//! <attempt_dir>/inputs/<block>/  upstream artifacts, under their declared paths
//! <attempt_dir>/inputs.json      FACTORY_INPUTS: {"block.key": "/abs/path"}
//! <attempt_dir>/corrections.json FACTORY_CORRECTIONS, only when there are corrections
//! FACTORY_ITEM, FACTORY_ITEM_KEY, FACTORY_GROUP: an instance of a fan-out block's item (JSON), key and group
//! FACTORY_PERSPECTIVE, FACTORY_AGGREGATE_KEY, FACTORY_FEEDBACK: a lens block's perspective, aggregate key and past ratings (JSON)
//! <attempt_dir>/stdout.log, stderr.log
//! ```
//!
//! The process leads its own process group so a timeout kills everything it
//! started, and it dies with the worker (`PR_SET_PDEATHSIG`) so a crashed
//! worker leaves no attempt running behind the next one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use factory_core::template::ArtifactFormat;
use serde_json::Value;

use crate::process::{kill_process_group, read_tail};
use crate::{AttemptInput, Execution, MAX_LOG_BYTES, check_format, directory};

pub(crate) async fn run(mut input: AttemptInput<'_>) -> Execution {
    let block = input.block;
    let argv: Vec<String> = match block.inputs.config.get("command").and_then(Value::as_array) {
        Some(argv) if !argv.is_empty() => argv
            .iter()
            .filter_map(Value::as_str)
            .map(|arg| expand(arg, input.template_dir.as_deref()))
            .collect(),
        _ => {
            return Execution::failed(format!(
                "block `{}` has no `inputs.config.command` argv",
                block.id
            ));
        }
    };

    let dir = &input.attempt_dir;
    let (work, out, inputs_dir) = (dir.join("work"), dir.join("out"), dir.join("inputs"));
    if let Err(error) = std::fs::create_dir_all(&work)
        .and_then(|()| std::fs::create_dir_all(&out))
        .and_then(|()| std::fs::create_dir_all(&inputs_dir))
    {
        return Execution::failed(format!("cannot create {}: {error}", dir.display()));
    }
    let inputs_file = match write_inputs(&input, &inputs_dir) {
        Ok(map) => {
            let path = dir.join("inputs.json");
            match write_json(&path, &map) {
                Ok(()) => path,
                Err(error) => return Execution::failed(error),
            }
        }
        Err(error) => return Execution::failed(error),
    };

    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&work)
        .stdin(Stdio::null())
        .env("FACTORY_OUTPUT_DIR", &out)
        .env("FACTORY_INPUTS", &inputs_file)
        .env(
            "FACTORY_PARAMS",
            serde_json::to_string(input.params).unwrap_or_default(),
        )
        .env("FACTORY_ATTEMPT", input.attempt.to_string())
        .env("FACTORY_RUN_ID", input.run_id)
        .env("FACTORY_BLOCK_ID", &block.id)
        .env("FACTORY_CONFIG", config_json(&block.inputs.config));
    for (name, value) in input.params {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        command.env(format!("FACTORY_PARAM_{}", env_suffix(name)), text);
    }
    if let Some(template_dir) = &input.template_dir {
        command.env("FACTORY_TEMPLATE_DIR", template_dir);
    }
    if let Some(item) = input.item {
        command
            .env(
                "FACTORY_ITEM",
                serde_json::to_string(&item.item).unwrap_or_default(),
            )
            .env("FACTORY_ITEM_KEY", &item.key)
            .env("FACTORY_GROUP", &item.group);
    }
    if let Some(lens) = input.lens {
        if let Some(perspective) = &lens.perspective {
            command.env("FACTORY_PERSPECTIVE", perspective);
        }
        command.env("FACTORY_AGGREGATE_KEY", &lens.aggregate_key);
        if let Some(past) = &lens.past {
            command.env(
                "FACTORY_FEEDBACK",
                serde_json::to_string(past).unwrap_or_default(),
            );
        }
    }
    if let Some(corrections) = input.corrections {
        let path = dir.join("corrections.json");
        if let Err(error) = write_json(&path, corrections) {
            return Execution::failed(error);
        }
        command.env("FACTORY_CORRECTIONS", &path);
    }
    let (stdout_path, stderr_path) = (dir.join("stdout.log"), dir.join("stderr.log"));
    match (
        std::fs::File::create(&stdout_path),
        std::fs::File::create(&stderr_path),
    ) {
        (Ok(stdout), Ok(stderr)) => {
            command.stdout(stdout).stderr(stderr);
        }
        (Err(error), _) | (_, Err(error)) => {
            return Execution::failed(format!(
                "cannot create log files in {}: {error}",
                dir.display()
            ));
        }
    }
    crate::process::isolate(&mut command);

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Execution::failed(format!(
                "block `{}`: cannot start `{}`: {error}",
                block.id, argv[0]
            ));
        }
    };
    let pid = child.id().map(|p| p as i32);
    if let (Some(pid), Some(on_spawn)) = (pid, input.on_spawn.take()) {
        on_spawn(pid);
    }

    let timeout = Duration::from_millis(block.timeout);
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status, false),
        Err(_) => {
            if let Some(pid) = pid {
                kill_process_group(pid);
            }
            (child.wait().await, true)
        }
    };
    // A process that exits may leave children in its group; they must not
    // outlive the attempt.
    if let Some(pid) = pid {
        kill_process_group(pid);
    }

    let (stdout, stdout_truncated) = read_tail(&stdout_path, MAX_LOG_BYTES);
    let (stderr, stderr_truncated) = read_tail(&stderr_path, MAX_LOG_BYTES);
    let mut execution = Execution {
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        ..Execution::default()
    };
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            execution.error = Some(format!(
                "block `{}`: waiting for the process failed: {error}",
                block.id
            ));
            return execution;
        }
    };
    execution.exit_code = status.code();
    if timed_out {
        execution.timed_out = true;
        execution.error = Some(format!(
            "block `{}` timed out after {} ms; its process group was killed",
            block.id, block.timeout
        ));
        return execution;
    }
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("was killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        let excerpt = last_line(&execution.stderr);
        execution.error = Some(if excerpt.is_empty() {
            format!("block `{}`: command {how}", block.id)
        } else {
            format!("block `{}`: command {how}: {excerpt}", block.id)
        });
        return execution;
    }

    collect_outputs(&input, &out, &mut execution);
    execution
}

/// Reads declared artifacts and `metrics.json` from the output directory.
pub(crate) fn collect_outputs(input: &AttemptInput<'_>, out: &Path, execution: &mut Execution) {
    let block = input.block;
    let mut problems = Vec::new();
    for artifact in &block.outputs.artifacts {
        let path = out.join(&artifact.path);
        // A symlink the block wrote must not lead out of its output directory.
        if let Err(error) = crate::confine::within(out, &artifact.path) {
            problems.push(format!(
                "artifact `{}` {error}; write the file itself",
                artifact.key
            ));
            continue;
        }
        // Too large is said before reading it (a block could write gigabytes).
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
            && meta.len() > crate::MAX_ARTIFACT_BYTES as u64
        {
            problems.push(format!(
                "artifact `{}` ({}) is {} bytes; an artifact may be at most {} bytes (64 MiB)",
                artifact.key,
                artifact.path,
                meta.len(),
                crate::MAX_ARTIFACT_BYTES
            ));
            continue;
        }
        let bytes = if artifact.format == ArtifactFormat::Directory {
            directory::pack_directory(&path)
        } else {
            std::fs::read(&path).map_err(|error| error.to_string())
        };
        match bytes {
            Ok(bytes) => {
                if let Some(problem) = check_format(
                    block,
                    &artifact.key,
                    &artifact.path,
                    artifact.format,
                    &bytes,
                ) {
                    problems.push(problem);
                }
                execution.artifacts.insert(artifact.key.clone(), bytes);
            }
            Err(error) if !path.exists() => {
                let _ = error;
                problems.push(format!(
                    "declared artifact `{}` was not written: expected $FACTORY_OUTPUT_DIR/{}",
                    artifact.key, artifact.path
                ));
            }
            Err(error) => problems.push(format!(
                "cannot read artifact `{}` ({}): {error}",
                artifact.key, artifact.path
            )),
        }
    }
    let metrics_path = out.join("metrics.json");
    if metrics_path.exists() {
        match crate::confine::read(out, "metrics.json").and_then(|bytes| {
            serde_json::from_slice::<BTreeMap<String, Value>>(&bytes).map_err(|e| e.to_string())
        }) {
            Ok(metrics) => execution.metrics = metrics,
            Err(error) => problems.push(format!(
                "metrics.json must be a JSON object of metric values: {error}"
            )),
        }
    }
    if !problems.is_empty() {
        execution.error = Some(format!("block `{}`: {}", block.id, problems.join("; ")));
    }
}

/// Materialises upstream artifacts under `inputs/<block>/<path>`.
fn write_inputs(
    input: &AttemptInput<'_>,
    inputs_dir: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for artifact in &input.inputs {
        let path = inputs_dir.join(&artifact.block).join(&artifact.path);
        let result = if artifact.format == ArtifactFormat::Directory {
            directory::unpack_directory(&artifact.content, &path)
        } else {
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, &artifact.content))
                .map_err(|e| e.to_string())
        };
        result.map_err(|error| {
            format!(
                "cannot write input `{}.{}` to {}: {error}",
                artifact.block,
                artifact.key,
                path.display()
            )
        })?;
        map.insert(
            format!("{}.{}", artifact.block, artifact.key),
            path.to_string_lossy().into_owned(),
        );
    }
    Ok(map)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// `inputs.config` without the argv, for the process to read its own settings.
fn config_json(config: &BTreeMap<String, Value>) -> String {
    let rest: BTreeMap<&String, &Value> = config.iter().filter(|(k, _)| *k != "command").collect();
    serde_json::to_string(&rest).unwrap_or_else(|_| "{}".to_string())
}

/// `${FACTORY_TEMPLATE_DIR}` in an argv element becomes the template's directory.
fn expand(arg: &str, template_dir: Option<&Path>) -> String {
    match template_dir {
        Some(dir) => arg.replace("${FACTORY_TEMPLATE_DIR}", &dir.to_string_lossy()),
        None => arg.to_string(),
    }
}

fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut line = line.to_string();
    if line.len() > 300 {
        line.truncate(line.floor_char_boundary(300));
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_become_env_suffixes() {
        assert_eq!(env_suffix("expert-name"), "EXPERT_NAME");
        assert_eq!(env_suffix("topic"), "TOPIC");
    }

    #[test]
    fn template_dir_is_expanded_in_argv() {
        let dir = Path::new("/srv/templates");
        assert_eq!(
            expand("${FACTORY_TEMPLATE_DIR}/steps/a.sh", Some(dir)),
            "/srv/templates/steps/a.sh"
        );
        assert_eq!(expand("plain", Some(dir)), "plain");
    }

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(
            last_line(b"first\nboom: no such file\n\n"),
            "boom: no such file"
        );
    }
}
