//! The opt-in real-model group for the engine's own LLM steps (run by
//! `scripts/real-llm.sh` with `--ignored` and `FACTORY_REAL_LLM_URL` set):
//! audit-analyze's llm step on clone-factory's expert-audit page, through
//! the same function a review submission calls.

use factory_core::audit_analyze::Method;

fn settings() -> factory_runtime::llm::LlmSettings {
    let url = std::env::var("FACTORY_REAL_LLM_URL")
        .expect("FACTORY_REAL_LLM_URL: run scripts/real-llm.sh, which starts the server");
    let model = std::env::var("FACTORY_REAL_LLM_MODEL").unwrap_or_else(|_| "smollm2".into());
    factory_runtime::llm::LlmSettings::from_lookup(|name| match name {
        "FACTORY_LLM_BASE_URL" => Some(url.clone()),
        "FACTORY_LLM_MODEL" => Some(model.clone()),
        _ => None,
    })
}

#[tokio::test]
#[ignore = "needs a real model server: scripts/real-llm.sh"]
async fn real_llm_audit_analyze_classifies_free_text_or_falls_back() {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates/clone-factory.json"),
    )
    .unwrap();
    let pipeline = factory_core::validate::validate_str(&template)
        .pipeline
        .unwrap();
    let settings = settings();
    let free_text = "The clone quotes the wrong price for the VIP Day. \
                     Her tone is far too formal in the welcome message. \
                     It forgot the third step of the Anchor Ladder framework. \
                     She would never promise results within a week. \
                     It was lovely to read overall.";
    let (analysis, classifier) = factory_engine::feedback::analyze_free_text(
        Some(&settings),
        &pipeline,
        None,
        "expert-audit",
        free_text,
    )
    .await;
    let by_llm = analysis
        .items
        .iter()
        .filter(|i| matches!(i.method, Method::Llm { .. }))
        .count();
    println!(
        "real_llm: audit-analyze classifier {classifier:?}: {} items ({by_llm} placed by the model), {} unclassified; problem: {:?}",
        analysis.items.len(),
        analysis.unclassified.len(),
        analysis.llm_problem
    );
    for item in &analysis.items {
        println!(
            "real_llm:   {} {} {} [{:?}] {}",
            item.skill_target,
            item.priority.as_str(),
            item.finding_type,
            item.method,
            item.sentence
        );
    }
    // Whatever the model says, nothing the keywords would find is lost,
    // every target is a block upstream of the page, and the classifier is
    // named.
    let keywords = factory_core::audit_analyze::classify(&pipeline, "expert-audit", free_text);
    assert!(analysis.items.len() >= keywords.items.len(), "{analysis:?}");
    assert_eq!(
        analysis.items.len() + analysis.unclassified.len(),
        5,
        "every sentence is placed or kept"
    );
    let page = pipeline.index_of("expert-audit").unwrap();
    for item in &analysis.items {
        let at = pipeline.index_of(&item.skill_target).unwrap();
        assert!(pipeline.descendants(at).contains(&page), "{item:?}");
    }
    assert!(classifier.is_some());
}
