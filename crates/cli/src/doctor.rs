//! `factory doctor [TEMPLATE]`: is the LLM set-up ready? Probes every
//! configured provider (does it answer, which models, what context window)
//! and, for a template, resolves each `llm` block's model and lists what is
//! missing (a provider, an env var of an `http` block or of `inputs.env`).
//! Exit 0 when everything a template needs is there, 2 otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use factory_core::Pipeline;
use factory_core::template::Runtime;
use factory_runtime::llm::LlmSettings;

pub async fn run(settings: &LlmSettings, template: Option<(&Path, &Pipeline)>) -> Result<ExitCode> {
    let mut problems: Vec<String> = settings.warnings().to_vec();
    println!("providers:");
    let mut unreachable = Vec::new();
    let mut any = false;
    for (name, client, origin) in settings.providers() {
        any = true;
        let slots = client.concurrency();
        match client.probe(Duration::from_secs(5)).await {
            Ok(models) => {
                let list: Vec<String> = models
                    .iter()
                    .take(8)
                    .map(|m| match m.context_window {
                        Some(window) => format!("{} ({window} tokens)", m.id),
                        None => m.id.clone(),
                    })
                    .collect();
                println!(
                    "  {name:<11} ok: {} call{} at a time{}; serves {}{} [{origin}]",
                    slots,
                    if slots == 1 { "" } else { "s" },
                    match client.rate_limit() {
                        Some(rate) => format!(", {} requests a minute", rate.requests),
                        None => String::new(),
                    } + &match client.token_limit() {
                        Some(limit) => format!(", {} tokens a minute", limit.tokens),
                        None => String::new(),
                    },
                    if list.is_empty() {
                        "no listed model".to_string()
                    } else {
                        list.join(", ")
                    },
                    if models.len() > 8 {
                        format!(" and {} more", models.len() - 8)
                    } else {
                        String::new()
                    },
                );
            }
            Err(error) => {
                println!("  {name:<11} NOT REACHABLE: {error} [{origin}]");
                unreachable.push(name.to_string());
            }
        }
    }
    if !any {
        println!(
            "  none configured: {}",
            factory_runtime::llm::missing_provider_hint("anthropic")
        );
    }

    let Some((path, pipeline)) = template else {
        return Ok(if unreachable.is_empty() && any && problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    };
    println!(
        "\ntemplate {} ({}):",
        pipeline.template().id,
        path.display()
    );
    // Model → the blocks that use it.
    let mut by_model: BTreeMap<Option<String>, Vec<&str>> = BTreeMap::new();
    let no_overrides = BTreeMap::new();
    for block in pipeline
        .blocks()
        .iter()
        .filter(|b| b.runtime == Runtime::Llm)
    {
        let model = factory_core::transitions::effective_model(
            pipeline.template(),
            block,
            &no_overrides,
            None,
        );
        by_model
            .entry(model.map(str::to_string))
            .or_default()
            .push(block.id.as_str());
    }
    for (model, blocks) in &by_model {
        let shown = model.as_deref().unwrap_or("(default)");
        match settings.resolve(model.as_deref()) {
            Ok(resolved) => {
                let (window, source) = settings.context_window(&resolved).await;
                let reach = if unreachable.iter().any(|u| u == resolved.provider) {
                    problems.push(format!(
                        "provider `{}` does not answer; {} block(s) use it",
                        resolved.provider,
                        blocks.len()
                    ));
                    " — NOT REACHABLE"
                } else {
                    ""
                };
                println!(
                    "  {shown} → {}:{} (context window {window} tokens, {}){reach}: {}",
                    resolved.provider,
                    resolved.model,
                    source.as_str(),
                    blocks.join(", ")
                );
            }
            Err(error) => {
                println!("  {shown}: MISSING: {error}: {}", blocks.join(", "));
                problems.push(format!("{} block(s): {error}", blocks.len()));
            }
        }
    }
    // Image and speech blocks: their models resolve to providers that make
    // media. Optional blocks are listed apart: without their provider they
    // are left out, which is no problem, while required ones are.
    let mut by_media: BTreeMap<(Option<String>, &str, bool), Vec<&str>> = BTreeMap::new();
    for block in pipeline.blocks().iter().filter(|b| b.runtime.makes_media()) {
        let model = factory_core::transitions::effective_model(
            pipeline.template(),
            block,
            &no_overrides,
            None,
        );
        let optional = factory_core::media_options::is_optional(&block.inputs.config);
        by_media
            .entry((model.map(str::to_string), block.runtime.as_str(), optional))
            .or_default()
            .push(block.id.as_str());
    }
    for ((model, runtime, optional), blocks) in &by_media {
        let name = *runtime;
        let runtime = if name == Runtime::Speech.as_str() {
            Runtime::Speech
        } else {
            Runtime::Image
        };
        let shown = model
            .as_deref()
            .unwrap_or(settings.default_media_model(runtime));
        match settings.resolve_media(model.as_deref(), runtime) {
            Ok(resolved) => println!(
                "  {shown} → {}:{} ({name}): {}",
                resolved.provider,
                resolved.model,
                blocks.join(", ")
            ),
            Err(error)
                if *optional && settings.media_provider_missing(model.as_deref(), runtime) =>
            {
                println!(
                    "  {shown} ({name}): not configured, so left out (optional): {error}: {}",
                    blocks.join(", ")
                );
            }
            Err(error) => {
                println!(
                    "  {shown} ({name}): MISSING: {error}: {}",
                    blocks.join(", ")
                );
                problems.push(format!("{} {name} block(s): {error}", blocks.len()));
            }
        }
    }
    let mut env: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    // An optional http call's URL: unset means the call is left out.
    let mut optional: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for block in pipeline.blocks() {
        for name in &block.inputs.env {
            env.entry(name.clone()).or_default().push(&block.id);
        }
        if block.runtime == Runtime::Http {
            let config = &block.inputs.config;
            let is_optional = config.get("optional") == Some(&serde_json::Value::Bool(true));
            let url_env = config.get("url_env").and_then(|v| v.as_str());
            let url_set = config.get("url").is_some()
                || url_env.is_some_and(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()));
            if let Some(name) = url_env {
                let into = if is_optional { &mut optional } else { &mut env };
                into.entry(name.to_string()).or_default().push(&block.id);
            }
            // The token is needed whenever the call is made.
            if let Some(name) = config.get("auth_env").and_then(|v| v.as_str()) {
                let into = if is_optional && !url_set {
                    &mut optional
                } else {
                    &mut env
                };
                into.entry(name.to_string()).or_default().push(&block.id);
            }
        }
    }
    for (name, blocks) in &env {
        let set = std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        println!(
            "  env {name}: {} ({})",
            if set { "set" } else { "MISSING" },
            blocks.join(", ")
        );
        if !set {
            problems.push(format!("set {name} (needed by {})", blocks.join(", ")));
        }
    }
    for (name, blocks) in &optional {
        let set = std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        println!(
            "  env {name}: {} ({})",
            if set {
                "set"
            } else {
                "unset: the call is left out"
            },
            blocks.join(", ")
        );
    }
    if problems.is_empty() {
        println!("\nready: every block has what it needs");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\nnot ready:");
        for problem in &problems {
            println!("  - {problem}");
        }
        Ok(ExitCode::from(2))
    }
}
