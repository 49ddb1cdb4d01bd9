//! Prompt-prefix reuse for a served tiny student. An agent sends the whole conversation again at
//! every turn, a little longer each time, so the attention cache of an earlier prompt's beginning
//! is reused and only the tokens after it are fed (what vLLM calls automatic prefix caching;
//! every prompt shares at least the tool header). A reused prefix attends exactly as a fresh
//! prefill would: the same tokens at the same positions, causally; only the order of
//! floating-point sums differs.

use std::collections::VecDeque;

use tch::{Device, Tensor};

use crate::model::{Cache, StepOutput, Tiny};
use crate::predict::prefill_batch;
use crate::template::{ChatTemplate, Prompt};

/// The caches of the last few prompts, most recent first.
pub struct PrefixCache {
    capacity: usize,
    entries: VecDeque<Entry>,
}

/// One earlier prompt and its cache at the prompt's end.
struct Entry {
    tokens: Vec<u32>,
    copyable: Vec<bool>,
    cache: Cache,
}

impl Entry {
    /// Length of the common beginning of this prompt and `p` (tokens and copy marks alike).
    fn common(&self, p: &Prompt) -> usize {
        (self.tokens.iter().zip(&self.copyable))
            .zip(p.tokens.iter().zip(&p.copyable))
            .take_while(|(a, b)| a == b)
            .count()
    }
}

impl PrefixCache {
    /// Keeps the caches of up to `capacity` prompts (0: reuse nothing).
    pub fn new(capacity: usize) -> PrefixCache {
        PrefixCache {
            capacity,
            entries: VecDeque::new(),
        }
    }

    /// Prefills `prompt` alone (a batch of one), from the longest beginning it shares with a
    /// kept prompt, with room for `room` generated tokens; keeps its cache for the prompts after
    /// it. Returns what [`prefill_batch`] returns, and how many of the prompt's tokens had their
    /// cache from an earlier prompt (not fed).
    pub fn prefill(
        &mut self,
        model: &Tiny,
        tpl: &ChatTemplate,
        prompt: &Prompt,
        room: usize,
        dev: Device,
    ) -> (Cache, StepOutput, usize) {
        let n = prompt.tokens.len();
        // At least the last token is fed: its output is the first choice's distribution.
        let best = (self.entries.iter().enumerate())
            .map(|(i, e)| (e.common(prompt).min(n.saturating_sub(1)), i))
            .max_by_key(|&(len, i)| (len, std::cmp::Reverse(i)));
        let (cache, out, reused) = match best {
            Some((len, i)) if len > 0 => {
                let rest = n - len;
                let mut cache = self.entries[i].cache.prefix(len, rest + room);
                let row = |x: Tensor| x.reshape([1, -1]).to_device(dev);
                let more = row(Tensor::from_slice(
                    &(prompt.tokens[len..].iter().map(|&t| t as i64)).collect::<Vec<_>>(),
                ));
                let copyable = row(Tensor::from_slice(&prompt.copyable[len..]));
                let out = model.extend_prompt(&mut cache, &more, &copyable);
                (cache, out, len)
            }
            _ => {
                let (cache, out) = prefill_batch(model, tpl, &[prompt], room, dev);
                (cache, out, 0)
            }
        };
        self.keep(prompt, &cache);
        (cache, out, reused)
    }

    /// Keeps `cache` (at the end of `prompt`) as the most recent entry; a kept prompt that this
    /// one extends is dropped (this one serves every prompt it served).
    fn keep(&mut self, prompt: &Prompt, cache: &Cache) {
        if self.capacity == 0 {
            return;
        }
        self.entries.retain(|e| e.common(prompt) < e.tokens.len());
        self.entries.push_front(Entry {
            tokens: prompt.tokens.clone(),
            copyable: prompt.copyable.clone(),
            cache: cache.snapshot(),
        });
        self.entries.truncate(self.capacity);
    }
}
