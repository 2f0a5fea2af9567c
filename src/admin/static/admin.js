// Converger admin: progressive enhancement only; every page works without it.
(function () {
  "use strict";

  // The new-channel form shows the fields of the selected type.
  var select = document.querySelector("[data-type-select]");
  if (select) {
    var sync = function () {
      document.querySelectorAll("[data-type-fields]").forEach(function (fs) {
        var on = fs.getAttribute("data-type-fields") === select.value;
        fs.hidden = !on;
        fs.disabled = !on;
      });
    };
    select.addEventListener("change", sync);
    sync();
  }

  // Secrets shown once are selected on focus, for copying.
  document.querySelectorAll("[data-select]").forEach(function (el) {
    el.addEventListener("focus", function () { el.select(); });
  });

  // The dashboard refreshes its numbers every five seconds.
  var live = document.querySelector("[data-live]");
  if (live) {
    var rows = document.querySelector("[data-live-rows=channels]");
    var failures = document.querySelector("[data-live-rows=failures]");
    var health = document.querySelector("[data-live-rows=health]");
    var hidden = function (form, name, value) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.appendChild(input);
    };
    var cell = function (tr, text, cls) {
      var td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = String(text);
      tr.appendChild(td);
      return td;
    };
    var refresh = function () {
      fetch(live.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (body) {
          var s = body.data;
          document.querySelectorAll("[data-stat]").forEach(function (el) {
            var v = s[el.getAttribute("data-stat")];
            if (v !== undefined) el.textContent = String(v);
          });
          if (rows && s.channels.length) {
            rows.textContent = "";
            s.channels.forEach(function (c) {
              var tr = document.createElement("tr");
              var a = document.createElement("a");
              a.href = "/admin/channels/" + encodeURIComponent(c.channel_id);
              a.textContent = c.channel_name;
              cell(tr, "").appendChild(a);
              cell(tr, c.tenant_name);
              cell(tr, c.pending, "num");
              cell(tr, c.delivered, "num");
              cell(tr, c.failed, "num");
              rows.appendChild(tr);
            });
          }
          if (health) {
            health.textContent = "";
            s.channel_health.forEach(function (h) {
              var tr = document.createElement("tr");
              var a = document.createElement("a");
              a.href = "/admin/channels/" + encodeURIComponent(h.channel_id);
              a.textContent = h.channel_name;
              cell(tr, "").appendChild(a);
              cell(tr, h.tenant_name);
              var badge = document.createElement("span");
              badge.className = "badge " + h.state;
              badge.textContent = h.state;
              var state = cell(tr, "");
              state.appendChild(badge);
              if (h.pause_reason) state.appendChild(document.createTextNode(" (" + h.pause_reason + ")"));
              cell(tr, h.consecutive_failures, "num");
              cell(tr, h.failing_since || "");
              cell(tr, h.last_error || "", "err");
              health.appendChild(tr);
            });
            if (!s.channel_health.length) {
              var none = document.createElement("tr");
              cell(none, "Every channel is healthy.", "empty").colSpan = 6;
              health.appendChild(none);
            }
          }
          if (failures) {
            failures.textContent = "";
            s.recent_failures.forEach(function (f) {
              var tr = document.createElement("tr");
              cell(tr, f.when);
              var a = document.createElement("a");
              a.href = "/admin/channels/" + encodeURIComponent(f.channel_id);
              a.textContent = f.channel_name;
              cell(tr, "").appendChild(a);
              cell(tr, f.attempts);
              cell(tr, f.last_error || "", "err");
              var form = document.createElement("form");
              form.method = "post";
              form.action = "/admin/deliveries/" + encodeURIComponent(f.delivery_id) + "/retry";
              hidden(form, "_csrf", failures.getAttribute("data-csrf"));
              hidden(form, "tenant", f.tenant_id);
              hidden(form, "back", "/admin");
              var button = document.createElement("button");
              button.type = "submit";
              button.textContent = "Retry";
              form.appendChild(button);
              cell(tr, "").appendChild(form);
              failures.appendChild(tr);
            });
            if (!s.recent_failures.length) {
              var tr = document.createElement("tr");
              cell(tr, "No failed deliveries.", "empty").colSpan = 5;
              failures.appendChild(tr);
            }
          }
        })
        .catch(function () { /* keep the last numbers */ });
    };
    setInterval(refresh, 5000);
  }

  // Operational events arrive over a WebSocket as they happen, newest on top.
  var feed = document.querySelector("[data-ops-feed]");
  if (feed && window.WebSocket) {
    var KEEP = 50;
    var td = function (tr, text) {
      var el = document.createElement("td");
      el.textContent = text;
      tr.appendChild(el);
      return el;
    };
    var show = function (e) {
      if (feed.querySelector('tr[data-id="' + e.id + '"]')) return;
      var none = feed.querySelector("tr.none");
      if (none) none.remove();
      var tr = document.createElement("tr");
      tr.setAttribute("data-id", e.id);
      td(tr, e.when);
      td(tr, e.tenant_name);
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = e.type;
      td(tr, "").appendChild(badge);
      var channel = td(tr, "");
      if (e.channel_id) {
        var a = document.createElement("a");
        a.href = "/admin/channels/" + encodeURIComponent(e.channel_id);
        a.textContent = e.channel_name || e.channel_id;
        channel.appendChild(a);
      }
      td(tr, e.summary);
      td(tr, e.webhook);
      feed.insertBefore(tr, feed.firstChild);
      while (feed.children.length > KEEP) feed.removeChild(feed.lastChild);
    };
    var wait = 1000;
    var connect = function () {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var ws = new WebSocket(scheme + location.host + feed.getAttribute("data-ops-feed"));
      ws.onopen = function () { wait = 1000; feed.setAttribute("data-connected", "true"); };
      ws.onmessage = function (m) {
        var frame = JSON.parse(m.data);
        if (frame.event === "ops_event") show(frame.payload);
      };
      ws.onclose = function () {
        feed.removeAttribute("data-connected");
        setTimeout(connect, wait);
        wait = Math.min(wait * 2, 30000);
      };
    };
    connect();
  }
})();
