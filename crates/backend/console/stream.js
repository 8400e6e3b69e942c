// Follows a deployment's run live. `EventSource` cannot send an Authorization header, so this
// reads the same SSE endpoint with `fetch` (which can) and parses `text/event-stream` itself:
// no token ever goes into a URL. On a dropped connection it resumes with `Last-Event-ID`.

import { session } from "./api.js";

/**
 * Calls `onEvent({id, event, data})` for each event until `onEvent` returns true or `signal`
 * aborts. Resolves when done.
 */
export async function follow(id, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; !signal.aborted && attempt < 20; attempt++) {
    const headers = { authorization: `Bearer ${session()?.access_token}`, accept: "text/event-stream" };
    if (lastId !== null) headers["last-event-id"] = lastId;
    try {
      const response = await fetch(`/infrastructure/${encodeURIComponent(id)}/events`, { headers, signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parse(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.id !== null) lastId = event.id;
          if (onEvent(event)) { reader.cancel(); return; }
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** One event block: `id:`, `event:` and `data:` lines (comments and keep-alives ignored). */
function parse(block) {
  let id = null, event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try { return { id, event, data: JSON.parse(data.join("\n")) }; } catch { return null; }
}
