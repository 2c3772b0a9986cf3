// Where an SLA problem is in the pasted text: the root names problems by JSON path
// (`applications[0].microservices[1].port`); `locate` finds that value's characters (or the
// deepest part of the path that exists, for a missing field) so the editor can select it.

/** `a[0].b` → ['a', 0, 'b']. */
export function splitPath(path) {
  const out = [];
  for (const part of String(path).split('.')) {
    const m = part.match(/^([^[\]]*)((?:\[\d+\])*)$/);
    if (!m) {
      out.push(part);
      continue;
    }
    if (m[1]) out.push(m[1]);
    for (const idx of m[2].matchAll(/\[(\d+)\]/g)) out.push(Number(idx[1]));
  }
  return out;
}

/**
 * Walks JSON `text` by its grammar, calling onValue(path, start, end) for every value (inner
 * values first); throws {message, offset} where the text first goes wrong.
 */
function walk(text, onValue) {
  let i = 0;
  const fail = what => {
    const found = i < text.length ? JSON.stringify(text[i]) : 'the end of the text';
    throw { message: `expected ${what}, found ${found}`, offset: i };
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const str = () => {
    if (text[i] !== '"') fail('a string');
    const start = ++i;
    for (;;) {
      if (i >= text.length) fail('the closing quote of the string');
      const c = text[i];
      if (c === '"') break;
      if (c < ' ') fail('no control character in a string');
      if (c !== '\\') i++;
      else if (text[i + 1] === 'u') {
        i++;
        if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail('four hex digits after \\u');
        i += 5;
      } else if ('"\\/bfnrt'.includes(text[i + 1] ?? 'x')) i += 2;
      else {
        i++;
        fail('an escape (\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u)');
      }
    }
    i++;
    return JSON.parse(text.slice(start - 1, i));
  };
  // The members of an object or the items of an array, up to `close`.
  const members = (close, member) => {
    i++;
    ws();
    if (text[i] === close) { i++; return; }
    for (let k = 0; ; k++) {
      member(k);
      ws();
      if (text[i] === ',') { i++; continue; }
      if (text[i] === close) { i++; return; }
      fail(`"," or "${close}"`);
    }
  };
  const value = path => {
    ws();
    const start = i;
    const c = text[i];
    if (c === '{') {
      members('}', () => {
        ws();
        const key = str();
        ws();
        if (text[i] !== ':') fail('":"');
        i++;
        value([...path, key]);
      });
    } else if (c === '[') {
      members(']', k => value([...path, k]));
    } else if (c === '"') {
      str();
    } else {
      const lit = ['true', 'false', 'null'].find(l => text.startsWith(l, i));
      const num = text.slice(i).match(/^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/);
      if (lit) i += lit.length;
      else if (num) i += num[0].length;
      else fail('a value');
    }
    onValue(path, start, i);
  };
  value([]);
  ws();
  if (i < text.length) fail('the end of the text');
}

/**
 * The [start, end) character range of the value at `path` in JSON `text`, or of the deepest
 * existing prefix of it (for a missing field); null when nothing of it parses.
 */
export function locate(text, path) {
  const target = splitPath(path);
  let best = null;
  const within = p => p.length <= target.length && p.every((seg, k) => String(seg) === String(target[k]));
  try {
    walk(text, (p, start, end) => {
      if (within(p) && (!best || p.length > best.depth)) best = { depth: p.length, start, end };
    });
  } catch {
    // Located as far as it parsed.
  }
  return best ? [best.start, best.end] : null;
}

/** Line and column (from 1) of a character offset. */
export function lineColumn(text, offset) {
  const before = text.slice(0, offset).split('\n');
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

/**
 * Where JSON `text` first goes wrong, as {message, offset}, or null when it parses.
 * Browsers' own messages do not always say where (Chromium's often do not).
 */
export function syntaxError(text) {
  try {
    JSON.parse(text);
    return null;
  } catch (e) {
    try {
      walk(text, () => {});
    } catch (found) {
      if (typeof found?.offset === 'number') return found;
    }
    return { message: String(e.message), offset: null };
  }
}
