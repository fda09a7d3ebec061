//! `factory prompt RUN BLOCK`: the exact prompt an `llm` block sent, or the
//! one it would send now.

use anyhow::{Result, bail};
use factory_core::prompt::{self, PromptInputs, UpstreamText};
use factory_store::Store;

use crate::user_error;

pub async fn run(
    store: &dyn Store,
    settings: &factory_runtime::llm::LlmSettings,
    run: &str,
    block_id: &str,
    attempt: Option<u32>,
) -> Result<()> {
    let run_id = store.resolve_run_id(run).await?;
    let stored = store.load_run(&run_id).await?;
    let Some(state) = stored.doc.blocks.get(block_id) else {
        bail!(user_error(format!(
            "run {run_id} has no block `{block_id}`"
        )));
    };
    let recorded = match attempt {
        Some(n) => match state.history.iter().find(|a| a.n == n) {
            Some(a) => Some(a),
            None => bail!(user_error(format!("block `{block_id}` has no attempt {n}"))),
        },
        None => state.history.last(),
    };
    // A reused attempt sent nothing: the prompt is the one of the attempt
    // its outputs came from (made from the same inputs).
    if let Some(from) = recorded
        .and_then(|a| a.report.as_ref())
        .and_then(|r| r.reused.as_ref())
    {
        let source = store.load_run(&from.run_id).await?;
        let sent = source
            .doc
            .blocks
            .get(&from.block)
            .and_then(|s| s.history.iter().find(|a| a.n == from.attempt))
            .and_then(|a| a.report.as_ref()?.llm.as_ref()?.prompt.clone());
        let Some(prompt_ref) = sent else {
            bail!(user_error(format!(
                "this attempt of `{block_id}` reused run {}'s attempt {} of `{}`, which sent no prompt",
                from.run_id, from.attempt, from.block
            )));
        };
        eprintln!(
            "(reused: the prompt run {}'s attempt {} sent; this attempt sent none)",
            from.run_id, from.attempt
        );
        print!(
            "{}",
            String::from_utf8_lossy(&store.get_blob(&prompt_ref.hash).await?)
        );
        return Ok(());
    }
    if let Some(prompt_ref) = recorded
        .and_then(|a| a.report.as_ref())
        .and_then(|r| r.llm.as_ref())
        .and_then(|llm| llm.prompt.as_ref())
    {
        print!(
            "{}",
            String::from_utf8_lossy(&store.get_blob(&prompt_ref.hash).await?)
        );
        return Ok(());
    }
    // A running attempt records its prompt when it finishes; until then the
    // run's state still holds everything it was built from.
    let running = recorded.is_some_and(|a| a.ended_at.is_none());
    if attempt.is_some() && !running {
        bail!(user_error(format!(
            "attempt {} of `{block_id}` sent no prompt (not an llm block, or it failed before the prompt was built: see `factory status`)",
            attempt.unwrap_or_default()
        )));
    }

    // Not sent yet: assemble what would be sent now.
    let Some(base) = factory_core::validate_str(&stored.template_json).pipeline else {
        bail!("the run's stored template no longer validates");
    };
    let pipeline = base.for_run(&stored.doc).unwrap_or(base);
    let Some(block) = pipeline.block(block_id) else {
        bail!(user_error(format!(
            "block `{block_id}` is not in the template"
        )));
    };
    if block.runtime == factory_core::template::Runtime::Speech {
        bail!(user_error(format!(
            "block `{block_id}` is a `speech` block: it sends no prompt, only its script's pieces, which are recorded once it runs (`factory prompt` then prints them)"
        )));
    }
    let image = block.runtime == factory_core::template::Runtime::Image;
    let template_dir = stored
        .template_path
        .as_deref()
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()));
    let skill = match (&block.skill, &template_dir) {
        (Some(skill), Some(dir)) => factory_runtime::llm::read_skill(dir, skill).ok(),
        _ => None,
    };
    let mut upstream = Vec::new();
    for dep in &block.inputs.depends {
        match stored.doc.dependency_artifacts(&dep.block, &dep.key) {
            Ok(found) => {
                for (from, artifact) in found {
                    let text = store.get_blob(&artifact.hash).await?;
                    upstream.push(UpstreamText {
                        block: from,
                        key: dep.key.clone(),
                        format: artifact.format,
                        text: factory_runtime::text_for_reader(artifact.format, &text),
                    });
                }
            }
            Err(_) => eprintln!(
                "note: upstream `{}.{}` has not been produced yet; it is left out",
                dep.block, dep.key
            ),
        }
    }
    let model = factory_core::transitions::effective_model(
        pipeline.template(),
        block,
        &stored.doc.models,
        stored.doc.default_model.as_deref(),
    );
    let lens = factory_core::lens::brief(&pipeline, &stored.doc, block_id);
    // Open gaps reach llm prompts only (the engine sends none to images).
    let open_gaps = if image {
        None
    } else {
        factory_core::gaps::prompt_section(&factory_core::gaps::open_for(
            &pipeline,
            &stored.doc,
            block_id,
        ))
    };
    let assembled = prompt::assemble(&PromptInputs {
        block,
        skill: skill.as_deref(),
        params: &stored.doc.params,
        upstream,
        corrections: state.corrections.as_ref(),
        reply_note: state.reply_note.as_ref(),
        shape: if image {
            prompt::ReplyShape::Image
        } else {
            factory_runtime::llm::reply_shape(settings, block, model)
        },
        item: state.instance.as_ref(),
        lens: lens.as_ref(),
        open_gaps: open_gaps.as_deref(),
    });
    match recorded.filter(|_| running) {
        Some(a) => eprintln!(
            "(attempt {} is running: this is its prompt, rebuilt from the run's state)",
            a.n
        ),
        None => eprintln!("(not sent yet: this is the prompt the next attempt would send)"),
    }
    if image {
        println!("{}", assembled.for_image());
    } else {
        print!("{}", assembled.render());
    }
    Ok(())
}
