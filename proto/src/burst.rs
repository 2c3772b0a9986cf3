//! Reading a session stream in bursts: the message that arrived and every one already waiting
//! behind it, so the receiving control plane applies them as one change (one store commit)
//! instead of one change per message. Under load messages queue up and bursts grow; when idle
//! a burst is the one message, so nothing waits for a batch to fill.

use futures::FutureExt;

/// At most this many messages in one burst.
pub const MAX_BURST: usize = 256;

/// Messages read in one go, and how the stream went on after them.
#[derive(Debug)]
pub struct Burst<T> {
    /// In the order they arrived; never empty.
    pub messages: Vec<T>,
    /// `Some` when the stream ended after these messages (`Ok`) or failed (`Err`): handle the
    /// messages, then stop.
    pub end: Option<Result<(), tonic::Status>>,
}

/// Waits for the next message of `stream`, then takes every message already received behind
/// it (up to [`MAX_BURST`]) without waiting. `Ok(None)`: the stream ended; `Err`: it failed.
/// Cancel-safe (the only await is the first message's), so it can be a `select!` branch.
pub async fn next_burst<T>(
    stream: &mut tonic::Streaming<T>,
) -> Result<Option<Burst<T>>, tonic::Status> {
    let Some(first) = stream.message().await? else {
        return Ok(None);
    };
    let mut messages = vec![first];
    let mut end = None;
    while messages.len() < MAX_BURST {
        match stream.message().now_or_never() {
            Some(Ok(Some(m))) => messages.push(m),
            Some(Ok(None)) => {
                end = Some(Ok(()));
                break;
            }
            Some(Err(e)) => {
                end = Some(Err(e));
                break;
            }
            None => break,
        }
    }
    Ok(Some(Burst { messages, end }))
}

/// `first` and the messages right behind it in `rest` of the same kind: those `is` holds
/// for, turned into a `T` by `take`. The first message of another kind stays in `rest`.
pub fn run_of<M, T>(
    first: T,
    rest: &mut std::iter::Peekable<impl Iterator<Item = M>>,
    is: impl Fn(&M) -> bool,
    take: impl Fn(M) -> Option<T>,
) -> Vec<T> {
    let mut run = vec![first];
    while let Some(m) = rest.next_if(|m| is(m)) {
        run.extend(take(m));
    }
    run
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_ends_at_the_first_message_of_another_kind() {
        let mut rest = [2, 4, 5, 6].into_iter().peekable();
        let run = super::run_of(0, &mut rest, |m| m % 2 == 0, |m| Some(m * 10));
        assert_eq!(run, vec![0, 20, 40]);
        assert_eq!(rest.collect::<Vec<_>>(), vec![5, 6]);
    }
}
