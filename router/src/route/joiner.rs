//! The one count-down joiner of every fan-out: a request sent as several parts (to several
//! servers or children) whose replies come back in any order and make one answer. What the
//! answer is, is the [`Fold`]'s business: merge a split multi-get, keep the worst reply,
//! answer with the first good one, sum `stats`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::{Completion, Reply};

/// What a joiner does with the parts' replies.
pub trait Fold {
    /// Takes the reply of part `part`. `Some` answers now; later replies still come here
    /// (the fold knows it answered).
    fn add(&mut self, part: usize, reply: Reply) -> Option<Reply>;
    /// Once every part has replied: the answer, unless one was given already.
    fn finish(&mut self) -> Option<Reply>;
}

/// Waits for a number of replies, folds them and completes `done` once.
pub struct Joiner<F> {
    left: Cell<usize>,
    fold: RefCell<F>,
    done: Cell<Option<Completion>>,
}

/// A joiner as a [`Completion::Part`] holds it, whatever its fold.
pub trait Part {
    fn part_done(&self, part: usize, reply: Reply);
}

impl<F: Fold + 'static> Joiner<F> {
    /// A joiner of `parts` replies. With none, `done` gets the fold's answer at once.
    pub fn new(parts: usize, fold: F, done: Completion) -> Rc<Joiner<F>> {
        let j = Rc::new(Joiner {
            left: Cell::new(parts),
            fold: RefCell::new(fold),
            done: Cell::new(Some(done)),
        });
        if parts == 0 {
            j.finish();
        }
        j
    }

    /// The completion of part `part`.
    pub fn part(self: &Rc<Self>, part: usize) -> Completion {
        Completion::Part(self.clone(), part)
    }

    fn finish(&self) {
        let answer = self.fold.borrow_mut().finish();
        if let (Some(done), Some(r)) = (self.done.take(), answer) {
            done.complete(r);
        }
    }
}

impl<F: Fold + 'static> Part for Joiner<F> {
    fn part_done(&self, part: usize, reply: Reply) {
        let now = self.fold.borrow_mut().add(part, reply);
        if let Some(r) = now {
            if let Some(done) = self.done.take() {
                done.complete(r);
            }
        }
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Answers with the concatenation of the parts in part order; `early` answers at once.
    struct Concat {
        got: Vec<Option<String>>,
        early: Option<usize>,
    }

    impl Fold for Concat {
        fn add(&mut self, part: usize, reply: Reply) -> Option<Reply> {
            let text = String::from_utf8_lossy(reply.head()).into_owned();
            self.got[part] = Some(text.clone());
            (self.early == Some(part)).then_some(reply)
        }
        fn finish(&mut self) -> Option<Reply> {
            let all: String = self.got.iter().flatten().cloned().collect();
            Some(Reply::Data(Bytes::from(all)))
        }
    }

    fn capture() -> (Completion, Rc<RefCell<Vec<String>>>) {
        let out = Rc::new(RefCell::new(Vec::new()));
        let o = out.clone();
        let c = Completion::then(move |r| {
            o.borrow_mut()
                .push(String::from_utf8_lossy(r.head()).into_owned())
        });
        (c, out)
    }

    fn data(s: &'static str) -> Reply {
        Reply::Data(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn completes_once_after_the_last_part_in_part_order() {
        let (done, out) = capture();
        let j = Joiner::new(
            3,
            Concat {
                got: vec![None; 3],
                early: None,
            },
            done,
        );
        j.part(2).complete(data("c"));
        j.part(0).complete(data("a"));
        assert!(out.borrow().is_empty(), "answered before the last part");
        j.part(1).complete(data("b"));
        assert_eq!(*out.borrow(), vec!["abc".to_string()]);
    }

    #[test]
    fn an_early_answer_is_the_only_one() {
        let (done, out) = capture();
        let j = Joiner::new(
            2,
            Concat {
                got: vec![None; 2],
                early: Some(1),
            },
            done,
        );
        j.part(1).complete(data("b"));
        assert_eq!(*out.borrow(), vec!["b".to_string()]);
        j.part(0).complete(data("a"));
        assert_eq!(
            *out.borrow(),
            vec!["b".to_string()],
            "finish answered again"
        );
    }

    #[test]
    fn no_parts_answers_at_once() {
        let (done, out) = capture();
        let _j = Joiner::new(
            0,
            Concat {
                got: Vec::new(),
                early: None,
            },
            done,
        );
        assert_eq!(*out.borrow(), vec![String::new()]);
    }
}
