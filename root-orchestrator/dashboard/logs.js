// An instance's log, followed: GET /api/service/<id>/instance/<n>/logs?follow=true&tail=N
// streams text/plain, the last N lines first and then what the instance prints. A root
// without that endpoint (404/405) is followed through the `logs` field of the instance (the
// last 1 KiB its worker reported), read again every 2 s.

import { authFetch, get } from './api.js';

const MAX_CHARS = 256 * 1024;
const TAIL_LINES = 200;
const POLL_MS = 2000;

/**
 * Follows instance `n` of service `id` into the <pre> `out`. `onMode(mode, detail)` tells:
 * 'stream', 'fallback' (the 1 KiB tail), 'ended' or 'error'. Returns a function that stops.
 */
export function followLog(id, n, out, onMode) {
  const ctrl = new AbortController();
  let timer = null;
  const stuckToBottom = () => out.scrollTop + out.clientHeight >= out.scrollHeight - 24;
  const show = (text, replace) => {
    const bottom = stuckToBottom();
    let t = replace ? text : out.textContent + text;
    if (t.length > MAX_CHARS) t = t.slice(t.length - MAX_CHARS);
    out.textContent = t;
    if (bottom) out.scrollTop = out.scrollHeight;
  };

  async function stream() {
    const path = `/api/service/${encodeURIComponent(id)}/instance/${n}/logs?follow=true&tail=${TAIL_LINES}`;
    const r = await authFetch(path, { signal: ctrl.signal });
    if (r.status === 404 || r.status === 405) return fallback();
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
      show(decoder.decode(value, { stream: true }), false);
    }
    onMode('ended');
  }

  async function fallback() {
    onMode('fallback');
    const poll = async () => {
      try {
        const svc = await get(`/api/service/${encodeURIComponent(id)}`);
        const inst = (svc.instance_list || []).find(i => i.instance_number === Number(n));
        if (!inst) {
          onMode('ended', 'the instance is gone');
          return;
        }
        if (inst.logs !== out.textContent) show(inst.logs || '', true);
      } catch (e) {
        onMode('error', e.message);
      }
      if (!ctrl.signal.aborted) timer = setTimeout(poll, POLL_MS);
    };
    await poll();
  }

  stream().catch(e => {
    if (!ctrl.signal.aborted) onMode('error', e.message);
  });
  return () => {
    ctrl.abort();
    clearTimeout(timer);
  };
}
