// The root's change feed (GET /api/events, server-sent events) read with fetch(): EventSource
// cannot send the Authorization header. Blocks of `id:`/`event:`/`data:` lines end with a
// blank line; after a drop the stream is opened again with Last-Event-ID, so no change is
// missed; a `gap` event means some were (the views list again).

import { authFetch } from './api.js';

/** One event block (its lines), or null for a comment (keep-alive). */
export function parseBlock(block) {
  const e = { id: null, event: 'message', data: '' };
  let any = false;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') e.id = value.trim();
    else if (field === 'event') e.event = value;
    else if (field === 'data') e.data = e.data ? `${e.data}\n${value}` : value;
    else continue;
    any = true;
  }
  return any ? e : null;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

export class Feed {
  /**
   * onItem(FeedItem) for every change; onGap() when changes were missed; onState('open' |
   * 'connecting' | 'closed') for the header's indicator.
   */
  constructor({ onItem, onGap, onState }) {
    this.onItem = onItem;
    this.onGap = onGap;
    this.onState = onState;
    this.last = null;
    this.stopped = true;
    this.ctrl = null;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    this.ctrl?.abort();
    this.onState('closed');
  }

  async loop() {
    let backoff = 1000;
    while (!this.stopped) {
      this.onState('connecting');
      try {
        const headers = { Accept: 'text/event-stream' };
        if (this.last !== null) headers['Last-Event-ID'] = this.last;
        this.ctrl = new AbortController();
        const r = await authFetch('/api/events', { headers, signal: this.ctrl.signal });
        if (!r.ok) throw new Error(`the event stream answered ${r.status}`);
        this.onState('open');
        backoff = 1000;
        await this.read(r.body.getReader());
      } catch (e) {
        if (this.stopped || e?.status === 401) return;
        console.warn('event stream:', e);
      }
      if (this.stopped) return;
      this.onState('connecting');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const e = parseBlock(buf.slice(0, end));
        buf = buf.slice(end + 2);
        if (e) this.dispatch(e);
      }
    }
  }

  dispatch(e) {
    if (e.event === 'gap') {
      this.onGap();
      return;
    }
    let item;
    try {
      item = JSON.parse(e.data);
    } catch {
      return;
    }
    if (e.id !== null) this.last = e.id;
    this.onItem(item);
  }
}
