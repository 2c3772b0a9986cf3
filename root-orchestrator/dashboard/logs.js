// An instance's log, followed: GET /api/service/<id>/instance/<n>/logs?follow=true&tail=N
// streams text/plain from the instance's worker, the last N lines first and then what the
// instance prints, until the instance is removed. A stream that breaks off (the worker lost)
// is an error, shown as such.

import { authFetch } from './api.js';

const MAX_CHARS = 256 * 1024;
const TAIL_LINES = 200;

/**
 * Follows instance `n` of service `id` into the <pre> `out`. `onMode(mode, detail)` tells:
 * 'stream', 'ended' or 'error'. Returns a function that stops.
 */
export function followLog(id, n, out, onMode) {
  const ctrl = new AbortController();
  const stuckToBottom = () => out.scrollTop + out.clientHeight >= out.scrollHeight - 24;
  const show = text => {
    const bottom = stuckToBottom();
    let t = out.textContent + text;
    if (t.length > MAX_CHARS) t = t.slice(t.length - MAX_CHARS);
    out.textContent = t;
    if (bottom) out.scrollTop = out.scrollHeight;
  };

  async function stream() {
    const path = `/api/service/${encodeURIComponent(id)}/instance/${n}/logs?follow=true&tail=${TAIL_LINES}`;
    const r = await authFetch(path, { signal: ctrl.signal });
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try {
        message = (await r.json()).message || message;
      } catch { /* not JSON */ }
      onMode('error', message);
      return;
    }
    onMode('stream');
    out.textContent = '';
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      show(decoder.decode(value, { stream: true }));
    }
    onMode('ended');
  }

  stream().catch(e => {
    if (!ctrl.signal.aborted) onMode('error', e.message);
  });
  return () => {
    ctrl.abort();
  };
}
