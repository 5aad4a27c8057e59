// kyu console: actions without reloading, live updates from
// /v1/events/stream. The pages work without it (forms post and redirect).
(() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf"]')?.content ?? "";
  const flash = document.getElementById("flash");
  const dot = document.getElementById("live-state");
  let flashTimer;

  function say(message, bad) {
    if (!flash) return;
    flash.textContent = message;
    flash.classList.toggle("bad", !!bad);
    flash.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { flash.hidden = true; }, bad ? 8000 : 4000);
  }

  // Re-renders <main> from the server, keeping scroll position and what
  // the user is typing in a filter.
  let refreshing = false, again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const active = document.activeElement;
      if (active && active.matches("main input")) return;
      const r = await fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (r.redirected && new URL(r.url).pathname === "/login") { location.href = r.url; return; }
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("live"), main = document.getElementById("live");
      if (fresh && main) {
        const open = [...main.querySelectorAll("details[open]")].map((d) => d.className);
        main.innerHTML = fresh.innerHTML;
        for (const c of open) main.querySelector(`details.${CSS.escape(c)}`)?.setAttribute("open", "");
        document.dispatchEvent(new CustomEvent("kyu:refreshed"));
      }
    } catch (_) {
      // The next event or tick tries again.
    } finally {
      refreshing = false;
      if (again) { again = false; setTimeout(refresh, 300); }
    }
  }

  let pending = null;
  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(); }, 700);
  }

  // Actions: forms marked data-action post with fetch and refresh the page.
  document.addEventListener("submit", async (e) => {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    e.preventDefault();
    const ask = form.getAttribute("data-confirm");
    if (ask && !confirm(ask)) return;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const r = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Accept": "application/json", "X-Kyu-Csrf": csrf },
        body: new URLSearchParams(new FormData(form)),
      });
      const body = await r.json().catch(() => ({ ok: false, message: `the server answered ${r.status}` }));
      say(body.message || (r.ok ? "Done." : "That did not work."), !r.ok);
      if (r.ok && body.location && new URL(body.location, location.href).pathname !== location.pathname) {
        location.href = body.location;
      } else {
        await refresh();
      }
    } catch (err) {
      say(`The server could not be reached: ${err}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // Live updates: a change this page shows re-renders it (at most every
  // 0.7 s); a slow client told it lagged re-renders too. Changes made
  // through other servers show at the next periodic refresh.
  const watch = document.body.dataset.watch || "";
  function relevant(c) {
    if (watch.startsWith("job:")) return c.id === watch.slice(4);
    if (watch.startsWith("queue:")) return c.queue === watch.slice(6);
    return true;
  }
  // A browser holds at most six HTTP/1.1 connections to one server, and
  // each stream keeps one: a page closes its stream when it is hidden or
  // left, so background tabs never starve the one in front.
  let source = null;
  function listen() {
    if (source || !window.EventSource || !document.getElementById("live")) return;
    const q = watch.startsWith("queue:") ? `?queue=${encodeURIComponent(watch.slice(6))}` : "";
    source = new EventSource(`/v1/events/stream${q}`);
    source.onopen = () => dot?.classList.add("up");
    source.onerror = () => dot?.classList.remove("up");
    source.addEventListener("change", (ev) => {
      try { if (relevant(JSON.parse(ev.data))) soon(); } catch (_) { soon(); }
    });
    source.addEventListener("lagged", soon);
  }
  function quiet() {
    source?.close();
    source = null;
    dot?.classList.remove("up");
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { quiet(); } else { listen(); soon(); }
  });
  window.addEventListener("pagehide", quiet);
  window.addEventListener("pageshow", (e) => { if (e.persisted) { listen(); soon(); } });
  listen();
  setInterval(() => { if (!document.hidden) soon(); }, 15000);
})();
