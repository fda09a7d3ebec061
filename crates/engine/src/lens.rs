//! Ratings of lens outputs ([`factory_core::lens`]): taken from people,
//! kept beside the run (a `rating` record per person, output and run, so
//! rating again replaces), and read back when a new run of the template
//! starts so its lens blocks hear what was said.

use factory_core::lens::{self, RateError, Rating, RatingEntry};
use factory_store::{RunRecord, Store, kinds};

use crate::{Engine, EngineError, Result, now_ms};

/// Most ratings of one template a new run reads (the newest).
const MAX_RATINGS: u32 = 10_000;

impl Engine {
    /// `actor` rates `block` of run `run_id` (a perspective, an instance of
    /// a fan-out lens, or an aggregate) `score` of 5, with `comment`.
    /// Rating the same output of the same run again replaces the rating.
    pub async fn rate(
        &self,
        actor: &str,
        run_id: &str,
        block: &str,
        score: i64,
        comment: &str,
    ) -> Result<RatingEntry> {
        let handle = self.open(run_id).await?;
        let doc = handle.doc();
        let rating = lens::rating_for(handle.pipeline(), doc, block, score, comment)?;
        let entry = RatingEntry {
            run_id: doc.run_id.clone(),
            by: actor.to_string(),
            at: now_ms(),
            rating,
        };
        self.store
            .put_record(&RunRecord {
                run_id: entry.run_id.clone(),
                template_id: doc.template_id.clone(),
                kind: kinds::RATING.to_string(),
                key: entry.rating.record_key(actor),
                actor: actor.to_string(),
                at: entry.at,
                body: serde_json::to_value(&entry.rating).map_err(|e| {
                    EngineError::BadReview(format!("the rating cannot be stored: {e}"))
                })?,
            })
            .await?;
        Ok(entry)
    }

    /// The ratings given to run `run_id`'s outputs, oldest first.
    pub async fn run_ratings(&self, run_id: &str) -> Result<Vec<RatingEntry>> {
        let run_id = self.store.resolve_run_id(run_id).await?;
        let records = self.store.records(&run_id, kinds::RATING).await?;
        Ok(records.iter().filter_map(entry_of).collect())
    }

    /// The ratings of every run of `template_id`, newest first.
    pub async fn template_ratings(&self, template_id: &str) -> Result<Vec<RatingEntry>> {
        template_ratings(self.store.as_ref(), template_id).await
    }
}

/// See [`Engine::template_ratings`].
pub(crate) async fn template_ratings(
    store: &dyn Store,
    template_id: &str,
) -> Result<Vec<RatingEntry>> {
    let records = store
        .records_for_template(template_id, kinds::RATING, MAX_RATINGS)
        .await?;
    Ok(records.iter().filter_map(entry_of).collect())
}

/// A stored rating; one whose body does not read (written by a later
/// version, say) is skipped rather than failing every new run.
fn entry_of(record: &RunRecord) -> Option<RatingEntry> {
    let rating: Rating = serde_json::from_value(record.body.clone()).ok()?;
    Some(RatingEntry {
        run_id: record.run_id.clone(),
        by: record.actor.clone(),
        at: record.at,
        rating,
    })
}

impl From<RateError> for EngineError {
    fn from(error: RateError) -> Self {
        match error {
            RateError::UnknownBlock(block, run) => {
                EngineError::NotFound(format!("block `{block}` in run {run}"))
            }
            other => EngineError::BadRating(other.to_string()),
        }
    }
}
