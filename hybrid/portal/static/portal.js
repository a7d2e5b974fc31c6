// The portal's only script: live status of a phone ceremony (Server-Sent Events) and the
// browser's own WebAuthn ("Use this device instead"). No build step, no dependencies.
"use strict";

(function () {
  const csrf = document.body.dataset.csrf;

  function b64urlToBytes(text) {
    const pad = "=".repeat((4 - (text.length % 4)) % 4);
    const raw = atob((text + pad).replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function bytesToB64url(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = "";
    for (const b of bytes) raw += String.fromCharCode(b);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    // An expired or modified session answers with the "Session Expired" page, not JSON.
    if (!response.ok && !data.error) data = { error: catalogue.SESSION_EXPIRED };
    return data;
  }

  const section = document.getElementById("ceremony");
  if (!section) return;
  const flowId = section.dataset.flow;
  const op = section.dataset.op;
  const catalogue = JSON.parse(document.getElementById("catalogue").textContent);
  const statusLine = document.getElementById("status");
  let source = null;
  let finished = false;

  function showProblem(title, message) {
    finished = true;
    if (source) source.close();
    document.getElementById("phone").hidden = true;
    document.getElementById("problem-title").textContent = title;
    document.getElementById("problem-message").textContent = message;
    document.getElementById("problem").hidden = false;
    document.getElementById("after-failure").hidden = false;
    const alt = document.getElementById("this-device");
    if (alt) alt.hidden = true;
  }

  function showFailure(name) {
    const entry = catalogue[name] || catalogue.PROTOCOL_ERROR;
    showProblem(entry.title, entry.message);
  }

  // ---- the phone: follow the flow's events -------------------------------------------------
  source = new EventSource("/flows/" + encodeURIComponent(flowId) + "/events");
  source.onmessage = function (message) {
    const event = JSON.parse(message.data);
    if (event.state === "done") {
      finished = true;
      source.close();
      statusLine.textContent = op === "login" ? "Signing you in" : "Passkey created";
      window.location.assign(event.redirect);
    } else if (event.state === "failed") {
      showProblem(event.title, event.message);
    } else {
      statusLine.textContent = event.status;
    }
  };
  source.onerror = function () {
    if (finished) source.close();
  };

  // ---- this device: navigator.credentials ----------------------------------------------------
  function creationOptions(json) {
    const o = json.publicKey;
    o.challenge = b64urlToBytes(o.challenge);
    o.user.id = b64urlToBytes(o.user.id);
    for (const c of o.excludeCredentials || []) c.id = b64urlToBytes(c.id);
    return o;
  }

  function requestOptions(json) {
    const o = json.publicKey;
    o.challenge = b64urlToBytes(o.challenge);
    for (const c of o.allowCredentials || []) c.id = b64urlToBytes(c.id);
    return o;
  }

  function credentialJson(credential) {
    const r = credential.response;
    const response = { clientDataJSON: bytesToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bytesToB64url(r.attestationObject);
      if (r.getTransports) response.transports = r.getTransports();
    } else {
      response.authenticatorData = bytesToB64url(r.authenticatorData);
      response.signature = bytesToB64url(r.signature);
      if (r.userHandle) response.userHandle = bytesToB64url(r.userHandle);
    }
    return {
      id: credential.id,
      rawId: bytesToB64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: response,
    };
  }

  function failureFor(error) {
    switch (error && error.name) {
      case "NotAllowedError":
      case "AbortError":
        return "USER_DECLINED";
      case "InvalidStateError":
        return op === "register" ? "EXCLUDED" : "PROTOCOL_ERROR";
      case "NotSupportedError":
        return "NOT_SUPPORTED";
      case "SecurityError":
        return "SESSION_EXPIRED";
      default:
        return "PROTOCOL_ERROR";
    }
  }

  async function thisDevice() {
    finished = true;
    if (source) source.close();
    await post("/flows/" + encodeURIComponent(flowId) + "/cancel");
    if (!window.PublicKeyCredential || !navigator.credentials || !navigator.credentials.create) {
      showFailure("NOT_SUPPORTED");
      return;
    }
    document.getElementById("phone").hidden = true;
    const wait = document.createElement("p");
    wait.setAttribute("role", "status");
    wait.id = "device-status";
    wait.textContent = "Follow your browser's prompt";
    section.prepend(wait);
    const path = op === "login" ? "/webauthn/login" : "/webauthn/register";
    const begun = await post(path + "/begin");
    if (begun.error) { wait.remove(); showProblem(begun.error.title, begun.error.message); return; }
    let credential;
    try {
      credential = op === "login"
        ? await navigator.credentials.get({ publicKey: requestOptions(begun) })
        : await navigator.credentials.create({ publicKey: creationOptions(begun) });
    } catch (error) {
      wait.remove();
      showFailure(failureFor(error));
      return;
    }
    const done = await post(path + "/complete", credentialJson(credential));
    wait.remove();
    if (done.error) { showProblem(done.error.title, done.error.message); return; }
    window.location.assign(done.redirect);
  }

  const alt = document.getElementById("this-device");
  if (alt) alt.addEventListener("click", thisDevice);
})();
