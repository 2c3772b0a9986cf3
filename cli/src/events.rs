//! The root's event stream (`GET /api/events`, server-sent events) as the CLI reads it:
//! `canopy apply --wait` wakes on its instances' changes instead of polling, and
//! `canopy events` prints every change as it happens.

use anyhow::Result;
use canopy_api::FeedItem;
use futures::StreamExt;
use std::pin::Pin;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

/// One event block (the lines before a blank line); `None` for a comment (keep-alive).
pub fn parse_block(block: &str) -> Option<Sse> {
    let mut e = Sse {
        id: None,
        event: "message".into(),
        data: String::new(),
    };
    let mut any = false;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => e.id = value.trim().parse().ok(),
            "event" => e.event = value.to_owned(),
            "data" => {
                if !e.data.is_empty() {
                    e.data.push('\n');
                }
                e.data.push_str(value);
            }
            _ => continue,
        }
        any = true;
    }
    any.then_some(e)
}

type Body = Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// An open event stream.
pub struct EventStream {
    body: Body,
    buf: String,
}

impl EventStream {
    pub fn new(resp: reqwest::Response) -> EventStream {
        EventStream {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event; `None` when the root closed the stream.
    pub async fn next(&mut self) -> Result<Option<Sse>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(e) = parse_block(&block) {
                    return Ok(Some(e));
                }
                continue;
            }
            match self.body.next().await {
                Some(chunk) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&chunk?).replace("\r\n", "\n")),
                None => return Ok(None),
            }
        }
    }

    /// The next change (a `gap` is returned as an error: the caller must list again).
    pub async fn next_item(&mut self) -> Result<Option<FeedItem>> {
        while let Some(e) = self.next().await? {
            if e.event == "gap" {
                anyhow::bail!("the event stream has a gap: {}", e.data);
            }
            if let Ok(item) = serde_json::from_str::<FeedItem>(&e.data) {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Only these kinds, comma-separated: application, service, instance, cluster, node.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this service (id or name) and its instances.
    #[arg(long)]
    pub service: Option<String>,
}

/// Prints every change as it comes, until interrupted; reconnects where it left off.
pub async fn run(client: &mut crate::client::Client, a: EventsArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(k) = &a.kind {
        query.push(format!("kind={k}"));
    }
    if let Some(s) = &a.service {
        let id = crate::commands::resolve_service(client, s).await?;
        query.push(format!("service={id}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let mut last = None;
    loop {
        let mut stream = client.events(&query, last).await?;
        loop {
            match stream.next_item().await {
                Ok(Some(i)) => {
                    println!("{}", line(&i));
                    last = Some(i.id);
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("warning: {e:#}; following live changes from here");
                    last = None;
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One line for `canopy events`.
pub fn line(i: &FeedItem) -> String {
    let what = match (i.kind.as_str(), i.instance) {
        ("instance", Some(n)) => format!("instance {}#{n}", i.service_id.as_deref().unwrap_or("")),
        (kind, _) if i.name.is_empty() => format!("{kind} {}", i.object_id),
        (kind, _) => format!("{kind} {} ({})", i.name, i.object_id),
    };
    let status = match (&i.status, &i.detail) {
        (Some(s), Some(d)) if !d.is_empty() => format!(" {s}: {d}"),
        (Some(s), _) => format!(" {s}"),
        _ => String::new(),
    };
    format!("{:>6} {} {what}{status}", i.id, i.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_blocks_parse_as_the_sse_format_says() {
        let e = parse_block("id: 7\nevent: instance\ndata: {\"a\":1}\n").unwrap();
        assert_eq!(
            e,
            Sse {
                id: Some(7),
                event: "instance".into(),
                data: "{\"a\":1}".into()
            }
        );
        assert_eq!(parse_block(":keep-alive\n"), None);
        let two = parse_block("data: a\ndata: b").unwrap();
        assert_eq!((two.event.as_str(), two.data.as_str()), ("message", "a\nb"));
    }
}
