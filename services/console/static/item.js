// Item page: overlays, mask editing at the image's resolution, decisions, keyboard shortcuts.
// Masks live in Uint8Arrays of width*height (0 or 255); the overlay canvas has the image's own
// size and is only scaled by CSS, so one mask pixel is one image pixel.
"use strict";

(() => {
  const page = JSON.parse(document.getElementById("task-data").textContent);
  const W = page.width;
  const H = page.height;
  const $ = (id) => document.getElementById(id);
  const overlay = $("overlay");
  const ctx = overlay.getContext("2d");
  const status = $("status");

  const masks = { predicted: null, expected: null, edited: null };
  const colours = { predicted: [239, 68, 68], expected: [34, 197, 94], edited: [59, 130, 246] };
  const undoStack = [];
  const redoStack = [];
  const MAX_UNDO = 50;
  let edited = false; // has the reviewer painted (or loaded another start mask)?
  let busy = false;

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  // A 401: the console session ran out (or was logged out in another tab), and nothing was done. Said
  // plainly, with a way to log in that comes back to this item: the bare "login required" left no way on.
  function sayLoggedOut(notDone, decision) {
    const lost = keepUnsaved(decision) ? "" :
      "; what was painted could not be kept in this tab (its storage is full or off), so it is lost if you leave this page";
    const here = window.location.pathname + window.location.search;
    const login = document.createElement("a");
    login.className = "login";
    login.href = "/login?" + new URLSearchParams({ error: "expired", next: here }).toString();
    login.textContent = "log in";
    login.addEventListener("click", () => keepUnsaved(decision)); // with what was painted since the 401
    status.replaceChildren("your session ran out, so " + notDone + ": ", login, " to come back to this item and try again" + lost);
    status.classList.add("error");
  }
  const loggedOutSaid = () => status.querySelector("a.login") !== null;

  // -- what a 401 left unsaved ------------------------------------------------------------
  // The "log in" link leaves the page, and the painted mask went with it. At a 401 the page keeps the
  // mask (and the decision pressed, with a rejection's reason and note) in this tab's sessionStorage,
  // under the pixels it was painted on (page.shown): a replay since then shows other pixels, and the
  // kept mask is dropped, never applied; so is what was kept for an item closed since.
  // What was kept for an item not opened again (a login elsewhere, another item next, decided by someone
  // else) stays in the tab: at about 175 kB a mask, some 25 filled its storage (about 5 MB), and the next
  // 401's mask was not kept. So a few others are kept at most, the oldest dropped first, also to make room.
  const unsavedPrefix = "skuforge.unsaved.";
  const unsavedKey = unsavedPrefix + page.taskId;
  const MAX_KEPT_ELSEWHERE = 4;

  function packMask(mask) {
    const bytes = new Uint8Array(Math.ceil(mask.length / 8));
    for (let i = 0; i < mask.length; i++) if (mask[i]) bytes[i >> 3] |= 128 >> (i & 7);
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(text);
  }

  function unpackMask(packed) {
    const text = atob(packed);
    const mask = new Uint8Array(W * H);
    if (text.length !== Math.ceil(mask.length / 8)) throw new Error("a kept mask of another size");
    for (let i = 0; i < mask.length; i++) if (text.charCodeAt(i >> 3) & (128 >> (i & 7))) mask[i] = 255;
    return mask;
  }

  // The keys of what was kept for other items, the oldest first.
  function keptElsewhere() {
    const others = [];
    for (let i = 0; i < sessionStorage.length; i++) {
      const key = sessionStorage.key(i);
      if (key === null || !key.startsWith(unsavedPrefix) || key === unsavedKey) continue;
      let at = 0;
      try { at = Number(JSON.parse(sessionStorage.getItem(key)).at) || 0; } catch (_) { at = 0; }
      others.push({ key, at });
    }
    return others.sort((a, b) => a.at - b.at).map((other) => other.key);
  }

  // Whether what is unsaved is kept (or there is nothing to keep); false where the storage is off, or full
  // of what no other item kept.
  function keepUnsaved(decision) {
    if (!mayDecide(decision) || masks.edited === null || (!edited && !decision)) return true;
    const kept = { shown: page.shown, at: Date.now(), decision: decision || null, width: W, height: H, mask: edited ? packMask(masks.edited) : null };
    if (decision === "reject") kept.reject = { reason: $("reject-reason").value, note: $("reject-note").value };
    try {
      const others = keptElsewhere();
      while (others.length > MAX_KEPT_ELSEWHERE) sessionStorage.removeItem(others.shift());
      for (;;) {
        try {
          sessionStorage.setItem(unsavedKey, JSON.stringify(kept));
          return true;
        } catch (error) {
          if (!others.length) throw error;
          sessionStorage.removeItem(others.shift()); // full (QuotaExceededError): the oldest makes room
        }
      }
    } catch (_) {
      return false;
    }
  }

  function forgetUnsaved() {
    try { sessionStorage.removeItem(unsavedKey); } catch (_) { /* storage off */ }
  }

  function loadMask(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => {
        const canvas = document.createElement("canvas");
        canvas.width = W;
        canvas.height = H;
        const c = canvas.getContext("2d");
        c.drawImage(img, 0, 0);
        const data = c.getImageData(0, 0, W, H).data;
        const mask = new Uint8Array(W * H);
        for (let i = 0; i < mask.length; i++) mask[i] = data[i * 4] >= 128 ? 255 : 0;
        resolve(mask);
      };
      img.onerror = () => reject(new Error("could not load " + url));
      img.src = url;
    });
  }

  // -- drawing the overlays ---------------------------------------------------------------
  const frame = ctx.createImageData(W, H);
  let drawQueued = false;

  function visible(name) {
    return $("show-" + name).checked && masks[name] !== null;
  }

  function draw() {
    drawQueued = false;
    const alpha = Math.round(parseFloat($("opacity").value) * 255);
    const layers = ["predicted", "expected", "edited"].filter(visible);
    const out = frame.data;
    for (let i = 0, p = 0; i < W * H; i++, p += 4) {
      let r = 0, g = 0, b = 0, n = 0;
      for (const name of layers) {
        if (masks[name][i]) {
          const c = colours[name];
          r += c[0]; g += c[1]; b += c[2]; n++;
        }
      }
      if (n) {
        out[p] = r / n; out[p + 1] = g / n; out[p + 2] = b / n; out[p + 3] = alpha;
      } else {
        out[p + 3] = 0;
      }
    }
    ctx.putImageData(frame, 0, 0);
  }

  function redraw() {
    if (!drawQueued) {
      drawQueued = true;
      requestAnimationFrame(draw);
    }
  }

  // -- editing ----------------------------------------------------------------------------
  function showEdited() {
    if (!$("show-edited").checked) {
      $("show-edited").checked = true;
      $("show-predicted").checked = false;
    }
  }

  function snapshot() {
    undoStack.push(masks.edited.slice());
    if (undoStack.length > MAX_UNDO) undoStack.shift();
    redoStack.length = 0;
  }

  function paintDisc(cx, cy, radius, value) {
    const r2 = radius * radius;
    const x0 = Math.max(0, Math.floor(cx - radius)), x1 = Math.min(W - 1, Math.ceil(cx + radius));
    const y0 = Math.max(0, Math.floor(cy - radius)), y1 = Math.min(H - 1, Math.ceil(cy + radius));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy <= r2) masks.edited[y * W + x] = value;
      }
    }
  }

  function paintLine(a, b) {
    const radius = parseInt($("brush-size").value, 10) / 2;
    const value = $("tool-eraser").checked ? 0 : 255;
    const dist = Math.hypot(b.x - a.x, b.y - a.y);
    const steps = Math.max(1, Math.ceil(dist / Math.max(0.5, radius / 2)));
    for (let s = 0; s <= steps; s++) {
      const t = s / steps;
      paintDisc(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, Math.max(0.5, radius), value);
    }
  }

  function imagePoint(event) {
    const rect = overlay.getBoundingClientRect();
    return { x: ((event.clientX - rect.left) * W) / rect.width, y: ((event.clientY - rect.top) * H) / rect.height };
  }

  let last = null;
  overlay.addEventListener("pointerdown", (event) => {
    if (!page.held || masks.edited === null || event.button !== 0) return;
    event.preventDefault();
    overlay.setPointerCapture(event.pointerId);
    snapshot();
    edited = true;
    showEdited();
    last = imagePoint(event);
    paintLine(last, last);
    redraw();
  });
  overlay.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const point = imagePoint(event);
    paintLine(last, point);
    last = point;
    redraw();
  });
  const endStroke = () => { last = null; };
  overlay.addEventListener("pointerup", endStroke);
  overlay.addEventListener("pointercancel", endStroke);

  function undo() {
    if (!undoStack.length) return say("nothing to undo");
    redoStack.push(masks.edited);
    masks.edited = undoStack.pop();
    redraw();
  }

  function redo() {
    if (!redoStack.length) return say("nothing to redo");
    undoStack.push(masks.edited);
    masks.edited = redoStack.pop();
    redraw();
  }

  function editFromExpected() {
    snapshot();
    masks.edited = masks.expected.slice();
    edited = true;
    showEdited();
    redraw();
    say("editing a copy of the expected mask");
  }

  function maskBlob() {
    const canvas = document.createElement("canvas");
    canvas.width = W;
    canvas.height = H;
    const c = canvas.getContext("2d");
    const data = c.createImageData(W, H);
    for (let i = 0, p = 0; i < W * H; i++, p += 4) {
      const v = masks.edited[i];
      data.data[p] = v; data.data[p + 1] = v; data.data[p + 2] = v; data.data[p + 3] = 255;
    }
    c.putImageData(data, 0, 0);
    return new Promise((resolve, reject) => canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the mask as PNG"))),
      "image/png",
    ));
  }

  // -- talking to the server --------------------------------------------------------------
  async function post(url, body, retried) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRF-Token": page.csrfToken },
      body: body || null,
      credentials: "same-origin",
    });
    let payload = {};
    try { payload = await response.json(); } catch (_) { /* not JSON */ }
    if (response.status === 403 && !retried && String(payload.detail).startsWith("missing or wrong CSRF")) {
      // Logged in again since this page was rendered (another tab, an expired session): the token is
      // the new session's. Fetch it and try once more, keeping the painted mask.
      const fresh = await fetch("/api/csrf", { credentials: "same-origin" });
      if (fresh.ok) {
        page.csrfToken = (await fresh.json()).csrf_token;
        return post(url, body, true);
      }
    }
    if (!response.ok) {
      const error = new Error(payload.detail ? String(JSON.stringify(payload.detail)) : response.statusText);
      error.status = response.status; // a network failure rejects in fetch() instead, without one
      throw error;
    }
    return payload;
  }

  // The queue's filters ride along in the query string, from the queue to each item and on to the
  // next one: without them "next" claimed the oldest item of any SKU or reason.
  const filters = (() => {
    const query = new URLSearchParams(window.location.search);
    query.delete("empty");
    const text = query.toString();
    return text ? "?" + text : "";
  })();
  const emptyQueue = "/" + (filters ? filters + "&" : "?") + "empty=1";
  let renewal = null; // the lease renewal's timer while this page holds the item
  let startRenewal = () => {}; // starts it (set below when the page holds the item)
  // The renewal a key press after an idle spell starts: a decision or release waits for it, or it raced
  // them (a release answered first was undone by the re-claim; a decision met the expired lease).
  let reclaim = Promise.resolve();

  async function next() {
    if (page.held) {
      // The server gives back one's own claim first: "next" reloaded this very item and lost the
      // painted mask. A held item is decided or released.
      return say("decide or release this item first (Esc releases it)", true);
    }
    try {
      const result = await post("/api/claim-next" + filters);
      window.location.assign(result.task ? "/tasks/" + result.task.task_id + filters : emptyQueue);
    } catch (error) {
      if (error.status === 401) return sayLoggedOut("no next item was claimed");
      say("could not claim the next item: " + error.message, true);
    }
  }

  // Whether this page may send the decision: a held item takes any, an item the gate accepted a rejection.
  const mayDecide = (decision) => page.held || (decision === "reject" && page.rejectable);

  // Whether the task is now closed as accepted by the gate (a replay), asked after a renewal is refused.
  async function acceptedByTheGate() {
    try {
      const response = await fetch("/api/tasks/" + page.taskId, { credentials: "same-origin" });
      return response.ok && (await response.json()).state === "accepted";
    } catch (_) {
      return false;
    }
  }

  async function decide(decision, rejectReason) {
    if (!mayDecide(decision)) {
      return say(page.rejectable ? "the gate accepted this item: only a rejection (r) is recorded" : "claim the item first (c)", true);
    }
    if (busy) return;
    busy = true;
    let sentMask = null;
    // Everything up to the answer inside the try: a mask the browser failed to encode threw before it,
    // and busy stayed set, so every later key did nothing, without a word.
    try {
      await reclaim;
      const form = new FormData();
      form.append("decision", decision);
      form.append("shown", page.shown); // what this page shows: refused if a replay replaced it since
      if (decision === "reject") form.append("reject_reason", rejectReason);
      if (decision === "approve_edited") {
        if (!edited) return say("paint on the mask first (or approve the predicted mask with p)", true);
        sentMask = masks.edited.slice(); // what a 409 compares with what the task kept
        form.append("mask", await maskBlob(), "mask.png");
      }
      say("saving " + decision + "…");
      const result = await post("/api/tasks/" + page.taskId + "/decision", form);
      saved(result.state, decision, "event " + result.event_id);
    } catch (error) {
      if (error.status === 401) return sayLoggedOut("the decision (" + decision + ") was not saved", decision);
      if (error.status === 409 && await answeredBefore(decision, rejectReason, sentMask)) return;
      say("not saved: " + error.message + (error.status === 409 ? await holdLost() : ""), true);
    } finally {
      busy = false;
    }
  }

  function saved(state, decision, detail) {
    page.held = false;
    page.rejectable = false;
    clearInterval(renewal); // decided: a renewal now would read "lease lost" beside the saved decision
    $("state").textContent = state;
    forgetUnsaved();
    say(state + " (" + decision + "); " + detail);
    document.body.dataset.decided = decision;
    setTimeout(next, 400);
  }

  // Whether a 409 to a decision answers one this reviewer recorded before, and if so says which: a try
  // whose answer was lost (a network error after the server saved it), pressed again, read "not saved:
  // ... already approved". Shown as saved only when the task keeps what this page sent: the same
  // decision by this reviewer, with the same mask (approve_edited) or reason (reject). The same reviewer
  // deciding in a second tab with another mask or reason read "saved by an earlier try" too, though the
  // task kept the first tab's: that is said as it is. (approve_predicted and approve_expected carry
  // nothing more: the page's "shown" pins the masks they keep.)
  async function answeredBefore(decision, rejectReason, sentMask) {
    let task = null;
    try {
      const response = await fetch("/api/tasks/" + page.taskId, { credentials: "same-origin" });
      if (response.ok) task = await response.json();
    } catch (_) {
      return false;
    }
    if (!task || task.decision !== decision || task.decided_by !== page.reviewer) return false;
    const resolved = task.resolved || {};
    let kept = true;
    if (decision === "reject") kept = resolved.reject_reason === String(rejectReason).trim();
    if (decision === "approve_edited") kept = await keptMask(resolved.final_mask, sentMask);
    if (kept === null) {
      // The stored mask did not load (a 404, the network): which mask the task keeps is not known here.
      say("already decided by " + task.decided_by + " (" + decision + "), in another tab or an earlier " +
        "try; whether with this page's mask could not be checked (the stored mask did not load): reload " +
        "the page to see the mask the task keeps", true);
      letGo();
      return true;
    }
    if (!kept) {
      const what = decision === "reject" ? "reason" : "mask";
      const theirs = decision === "reject" ? ": " + resolved.reject_reason : ", with another mask";
      say("already decided by " + task.decided_by + " (" + decision + theirs + "), in another tab or an " +
        "earlier try: this page's " + what + " was not saved", true);
      letGo();
      return true;
    }
    saved(task.state, decision, "saved by an earlier try, whose answer did not reach this page");
    return true;
  }

  // The item is decided or someone else's: the page stops holding it (and renewing), so "n" and Esc do not
  // wait for a renewal to find the lease lost.
  function letGo() {
    page.held = false;
    page.rejectable = false;
    clearInterval(renewal);
  }

  // After any other 409 to a decision: reads the task, and where this reviewer no longer holds it (decided
  // or taken by someone else, withdrawn) lets go of it at once, returning what to add to the status.
  // Kept, "n" answered "decide or release this item first" and Esc "could not release" until the next
  // renewal, a third of the lease later, found the lease lost. A task still claimed by this reviewer is
  // kept (a replay changed its pixels: the 409 asks for a reload; a lease run out: the renewal claims it
  // again), and so is the hold where the task cannot be read.
  async function holdLost() {
    if (!page.held) return "";
    let task = null;
    try {
      const response = await fetch("/api/tasks/" + page.taskId, { credentials: "same-origin" });
      if (response.ok) task = await response.json();
    } catch (_) {
      return "";
    }
    if (!task || (task.state === "claimed" && task.claimed_by === page.reviewer)) return "";
    // A lease run out with nobody taking the item reads "pending": the next renewal claims it again in place.
    if (task.state === "pending") return "";
    letGo();
    if (task.state === "accepted") {
      page.rejectable = true; // as when a renewal finds it so
      return " (the gate accepted this item meanwhile, so it is stored: reject it (r) if it should not be)";
    }
    return " (this page no longer holds the item: n claims the next one)";
  }

  // Whether the corrected mask the task keeps (``ref``) has the pixels of ``sentMask``; null where the
  // stored mask did not load, so that neither "saved" nor "another mask" is said of it.
  async function keptMask(ref, sentMask) {
    if (!ref || !sentMask) return false;
    let stored;
    try {
      stored = await loadMask("/tasks/" + page.taskId + "/images/corrected?v=" + ref.sha256.slice(0, 16));
    } catch (_) {
      return null;
    }
    return stored.length === sentMask.length && stored.every((value, i) => value === sentMask[i]);
  }

  async function release() {
    if (!page.held) return;
    await reclaim;
    // No renewal while the release is on its way: one answered after it found the item released and
    // claimed it again, and the item stayed held by a page that had left it.
    page.held = false;
    clearInterval(renewal);
    try {
      await post("/api/tasks/" + page.taskId + "/release");
      forgetUnsaved(); // left on purpose: what was kept is not wanted any more
      window.location.assign("/" + filters);
    } catch (error) {
      page.held = true;
      startRenewal();
      if (error.status === 401) return sayLoggedOut("the item was not released");
      say("could not release: " + error.message, true);
    }
  }

  async function claim() {
    // Claiming a held item reloaded the page, and the painted mask with it.
    if (page.held) return say("this page holds the item already: decide (p, e, a, r) or release it (Esc)");
    try {
      await post("/api/tasks/" + page.taskId + "/claim");
      window.location.reload();
    } catch (error) {
      if (error.status === 401) return sayLoggedOut("the item was not claimed");
      say("could not claim: " + error.message, true);
    }
  }

  if (page.held) {
    // Renew the lease while the page is open. A failed renewal claims again in place (a reload would
    // lose the painted mask); only a 409 to that claim (someone else holds it, or it was decided)
    // ends the hold. A network error or a 503 keeps it: the next tick tries again.
    let troubled = false; // the last renewal failed: say so once it works again
    // A tab left open renewed its lease for good, and the item never went back to the queue. The page
    // stops renewing after page.idleS without a key press or click (the lease then runs out as for a
    // closed tab); the next one renews at once, which claims the item again if nobody else took it.
    let lastActive = Date.now();
    let idleSaid = false;
    const idle = () => Date.now() - lastActive > page.idleS * 1000;
    const renew = async () => {
      if (!page.held) return;
      if (idle()) {
        if (!idleSaid) {
          idleSaid = true;
          say("idle: this item goes back to the queue when its lease runs out; press a key to keep it", true);
          troubled = true; // the next renewal that works says so
        }
        return;
      }
      try {
        await post("/api/tasks/" + page.taskId + "/renew");
        if (troubled) say("lease renewed");
        troubled = false;
        return;
      } catch (_) { /* claim again below */ }
      if (!page.held) return; // released or decided meanwhile: the refusal was the release's doing
      try {
        await post("/api/tasks/" + page.taskId + "/claim");
        troubled = false;
        say("lease renewed");
      } catch (error) {
        if (error.status === 409) {
          page.held = false;
          clearInterval(renewal);
          if (await acceptedByTheGate()) {
            // A person's rejection still stands against the gate's acceptance (as on the accepted item's page).
            page.rejectable = true;
            say("the gate accepted this item meanwhile, so it is stored: reject it (r) if it should not be", true);
          } else {
            say("lease lost: " + error.message + " — this item can no longer be saved from this page", true);
          }
        } else if (error.status === 401) {
          // Kept trying (a login in another tab brings the session back), without hiding what a
          // decision or release said it could not do.
          troubled = true;
          if (!loggedOutSaid()) sayLoggedOut("the lease on this item is not renewed");
        } else {
          troubled = true;
          say("could not renew the lease (" + error.message + "); trying again", true);
        }
      }
    };
    startRenewal = () => { renewal = setInterval(renew, Math.max(2000, (page.leaseS * 1000) / 3)); };
    startRenewal();
    for (const kind of ["keydown", "pointerdown", "wheel"]) {
      window.addEventListener(kind, () => {
        const wasIdle = idle();
        lastActive = Date.now();
        if (wasIdle) {
          idleSaid = false;
          reclaim = renew();
        }
      }, { capture: true, passive: true });
    }
  }

  // -- the reject dialog ------------------------------------------------------------------
  const dialog = $("reject-dialog");
  function openReject() {
    if (!mayDecide("reject")) return say("claim the item first (c)", true);
    dialog.showModal();
    $("reject-note").focus();
  }
  $("reject-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const note = $("reject-note").value.trim();
    const reason = $("reject-reason").value + (note ? ": " + note : "");
    dialog.close();
    decide("reject", reason);
  });
  $("reject-cancel").addEventListener("click", () => dialog.close());
  dialog.addEventListener("keydown", (event) => {
    if (event.target.id !== "reject-note" && /^[1-9]$/.test(event.key)) {
      const option = $("reject-reason").options[parseInt(event.key, 10) - 1];
      if (option) $("reject-reason").value = option.value;
    }
  });

  // -- buttons and keys -------------------------------------------------------------------
  const click = (id, handler) => { const el = $(id); if (el) el.addEventListener("click", handler); };
  click("approve-predicted", () => decide("approve_predicted"));
  click("approve-expected", () => decide("approve_expected"));
  click("approve-edited", () => decide("approve_edited"));
  click("reject", openReject);
  click("release", release);
  click("next", next);
  click("claim", claim);
  click("undo", undo);
  click("redo", redo);
  click("from-expected", editFromExpected);
  for (const id of ["show-predicted", "show-expected", "show-edited", "opacity"]) $(id).addEventListener("input", redraw);
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });

  function toggle(id) { $(id).checked = !$(id).checked; redraw(); }
  function nudge(id, delta) {
    const el = $(id);
    el.value = String(Math.min(parseFloat(el.max), Math.max(parseFloat(el.min), parseFloat(el.value) + delta)));
    el.dispatchEvent(new Event("input"));
  }

  document.addEventListener("keydown", (event) => {
    if (dialog.open) return; // the dialog handles its own keys (Enter confirms, Esc cancels)
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" && event.target.type !== "checkbox" && event.target.type !== "radio" && event.target.type !== "range") return;
    if (tag === "select" || tag === "textarea") return;
    const key = event.key;
    const mod = event.ctrlKey || event.metaKey;
    let handled = true;
    if (mod && (key === "z" || key === "Z")) { event.shiftKey ? redo() : undo(); }
    else if (mod && (key === "y" || key === "Y")) redo();
    else if (mod || event.altKey) handled = false;
    else if (key === "p") decide("approve_predicted");
    else if (key === "e") decide("approve_expected");
    else if (key === "E") editFromExpected();
    else if (key === "a") decide("approve_edited");
    else if (key === "r") openReject();
    else if (key === "n") next();
    else if (key === "c") claim();
    else if (key === "Escape") release();
    else if (key === "b") $("tool-brush").checked = true;
    else if (key === "x") $("tool-eraser").checked = true;
    else if (key === "[") nudge("brush-size", -2);
    else if (key === "]") nudge("brush-size", 2);
    else if (key === ",") nudge("opacity", -0.1);
    else if (key === ".") nudge("opacity", 0.1);
    else if (key === "1") toggle("show-predicted");
    else if (key === "2") toggle("show-expected");
    else if (key === "3") toggle("show-edited");
    else handled = false;
    if (handled) event.preventDefault();
  });

  // A kept rejection's reason and note go back into the reject dialog, so `r` and Enter send them.
  function restoreRejection(reject) {
    const reasons = Array.from($("reject-reason").options, (option) => option.value);
    if (!reject || !reasons.includes(reject.reason)) return false;
    $("reject-reason").value = reject.reason;
    $("reject-note").value = String(reject.note || "");
    return true;
  }

  // Put back what a 401 left unsaved (see keepUnsaved), on a page that holds the item, or a rejection on
  // an item the gate accepted since (a person's rejection is still recorded); never sent on its own: the
  // reviewer looks at it and presses the decision again, or discards it.
  function restoreUnsaved() {
    let kept = null;
    try { kept = JSON.parse(sessionStorage.getItem(unsavedKey) || "null"); } catch (_) { kept = null; }
    if (kept === null) return;
    if (!page.held && !(page.rejectable && kept.decision === "reject")) {
      if (!["approved", "rejected", "withdrawn", "accepted"].includes(page.state)) return; // a claim reloads the page, and restores it then
      forgetUnsaved(); // closed: nothing restores it here, and kept, it stayed in the tab for good
      return say("this item was " + page.state + " while the session was out, so what was kept from before is dropped", true);
    }
    if (kept.shown !== page.shown) {
      forgetUnsaved();
      return say("this item changed since the session ran out (the gate was replayed): what was painted before is dropped", true);
    }
    const rejection = kept.decision === "reject" && restoreRejection(kept.reject);
    if (!page.held && !rejection) return forgetUnsaved(); // only the rejection's reason is of use here
    const before = masks.edited;
    if (kept.mask && page.held) {
      try {
        masks.edited = unpackMask(kept.mask);
      } catch (_) {
        forgetUnsaved();
        return say("what was painted before the session ran out could not be read back, and is dropped", true);
      }
      edited = true;
      showEdited();
    }
    const discard = document.createElement("button");
    discard.type = "button";
    discard.className = "discard";
    discard.textContent = "discard it";
    discard.addEventListener("click", () => {
      forgetUnsaved();
      $("reject-form").reset();
      masks.edited = before;
      edited = false;
      undoStack.length = 0;
      redoStack.length = 0;
      $("show-edited").checked = false;
      $("show-predicted").checked = true;
      redraw();
      say("discarded what was painted before the session ran out");
    });
    const painted = kept.mask && page.held;
    const what = (painted ? "the mask painted" : "the decision pressed") + " before the session ran out" +
      (rejection ? ", with the rejection's reason" : "") + (page.held ? "" : " (the gate accepted this item meanwhile)");
    const again = kept.decision ? "press " + kept.decision + " again to save it" : "decide to save it";
    status.replaceChildren("restored " + what + (painted && kept.decision ? " (" + kept.decision + ")" : "") +
      "; not saved yet: " + again + ", or ", discard);
    status.classList.remove("error");
  }

  const loads = [loadMask(page.images.predicted), loadMask(page.images.expected)];
  if (page.images.corrected) loads.push(loadMask(page.images.corrected)); // approved as edited
  Promise.all(loads)
    .then(([predicted, expected, corrected]) => {
      masks.predicted = predicted;
      masks.expected = expected;
      masks.edited = corrected ? corrected : predicted.slice();
      restoreUnsaved();
      document.body.dataset.ready = "1";
      redraw();
    })
    .catch((error) => say(error.message, true));
})();
