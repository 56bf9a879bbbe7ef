// voicectl call page: pick an agent, call it over WebRTC, see the transcript and latency live.
// Plain browser JavaScript, no build step. The runtime sends the call's events over an
// RTCDataChannel labelled "voicectl"; the page sends {"type":"hangup"} on it to hang up.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    credential: $("credential"), tenantRow: $("tenant-row"), tenant: $("tenant"), load: $("load"),
    agent: $("agent"), call: $("call"), hangup: $("hangup"), status: $("status"), level: $("level"),
    stats: $("stats"), remote: $("remote"), transcript: $("transcript"), interim: $("interim"),
    latency: document.querySelector("#latency tbody"), error: $("error"),
  };
  const state = { status: "idle", callId: null, transcript: [], latencies: [], events: 0, endReason: null };
  let pc = null, channel = null, mic = null, statsTimer = null, lastEnergy = null;

  // Credentials: a runtime/admin key lists agents and mints a browser token; a token is used as is.
  const isToken = (value) => value.startsWith("wrtc_");
  const isAdmin = (value) => value.startsWith("vk_admin_");

  function fromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const credential = params.get("token") || params.get("key") || "";
    if (credential) ui.credential.value = credential;
    if (params.get("tenant")) ui.tenant.value = params.get("tenant");
    // Keep the secret out of the address bar (and out of screenshots / history) once read.
    if (location.hash) history.replaceState(null, "", location.pathname);
    return { agent: params.get("agent"), number: params.get("number") };
  }

  function tokenTarget(token) {
    try {
      const body = token.slice(5).split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
      const data = JSON.parse(atob(body + "=".repeat((4 - body.length % 4) % 4)));
      return data.a ? { agent_id: data.a } : { number: data.n };
    } catch (e) {
      return {};
    }
  }

  function setStatus(text) {
    state.status = text;
    ui.status.textContent = text;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.classList.toggle("hidden", !message);
  }

  async function api(method, path, body, credential) {
    const headers = { "Authorization": "Bearer " + credential };
    if (body) headers["Content-Type"] = "application/json";
    if (isAdmin(credential) && ui.tenant.value.trim()) headers["X-Tenant-ID"] = ui.tenant.value.trim();
    const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const reason = data?.details?.reason ? ` (${data.details.reason})` : "";
      throw new Error(`${response.status}: ${data?.message || response.statusText}${reason}`);
    }
    return data;
  }

  function credentialChanged() {
    const value = ui.credential.value.trim();
    ui.tenantRow.classList.toggle("hidden", !isAdmin(value));
    ui.load.disabled = !value || isToken(value);
    if (isToken(value)) {
      const target = tokenTarget(value);
      ui.agent.replaceChildren(new Option(target.agent_id ? `agent ${target.agent_id}` : `number ${target.number}`, ""));
      ui.agent.disabled = true;
    }
    ui.call.disabled = !value || pc !== null || (!isToken(value) && !ui.agent.value);
  }

  async function loadAgents(preselect) {
    showError("");
    try {
      const page = await api("GET", "/api/v1/agents?limit=200", null, ui.credential.value.trim());
      const options = page.items.map((agent) => {
        const live = agent.active_version !== null && agent.active_version !== undefined;
        const option = new Option(live ? agent.name : `${agent.name} (no active version)`, agent.id);
        option.disabled = !live;
        return option;
      });
      ui.agent.replaceChildren(...(options.length ? options : [new Option("no agents", "")]));
      ui.agent.disabled = !options.length;
      if (preselect) ui.agent.value = preselect;
    } catch (e) {
      showError("Loading agents failed: " + e.message);
    }
    credentialChanged();
  }

  // The call

  async function browserToken(credential) {
    if (isToken(credential)) {
      const ice = await api("GET", "/api/v1/webrtc/ice-servers", null, credential);
      return { token: credential, iceServers: ice.ice_servers };
    }
    const minted = await api("POST", "/api/v1/webrtc/tokens", { agent_id: ui.agent.value, ttl_s: 300 }, credential);
    return { token: minted.token, iceServers: minted.ice_servers };
  }

  function gatheringDone(peer, timeoutMs) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { peer.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (peer.iceGatheringState === "complete") done(); };
      peer.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);  // answer with what we have: the runtime does not trickle
    });
  }

  async function call() {
    showError("");
    clearCall();
    ui.call.disabled = true;
    setStatus("starting");
    try {
      const { token, iceServers } = await browserToken(ui.credential.value.trim());
      setStatus("microphone");
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true }, video: false,
      });
      pc = new RTCPeerConnection({ iceServers });
      mic.getTracks().forEach((track) => pc.addTrack(track, mic));
      channel = pc.createDataChannel("voicectl");
      channel.onmessage = (message) => onMessage(message.data);
      pc.ontrack = (event) => {
        ui.remote.srcObject = event.streams[0] || new MediaStream([event.track]);
        ui.remote.play().catch(() => {});
      };
      pc.onconnectionstatechange = () => {
        const s = pc && pc.connectionState;
        if (s === "connected") setStatus("connected");
        else if (s === "failed" || s === "closed") ended(s === "failed" ? "connection failed" : "closed");
      };
      ui.hangup.disabled = false;
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringDone(pc, 3000);
      setStatus("calling");
      const answer = await api("POST", "/api/v1/webrtc/sessions", { type: "offer", sdp: pc.localDescription.sdp }, token);
      state.callId = answer.call_id;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      statsTimer = setInterval(showStats, 250);
    } catch (e) {
      showError("The call failed: " + e.message);
      ended("failed");
    }
  }

  function hangup() {
    if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "hangup" }));
    // Give the hangup a moment on the wire before the transport closes.
    setTimeout(() => ended("hung up"), 300);
  }

  function ended(reason) {
    if (!pc && !mic) return;
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    if (pc) pc.close();
    if (mic) mic.getTracks().forEach((track) => track.stop());
    pc = channel = mic = null;
    state.endReason = state.endReason || reason;
    setStatus("ended: " + state.endReason);
    ui.hangup.disabled = true;
    ui.level.value = 0;
    credentialChanged();
  }

  function clearCall() {
    state.callId = state.endReason = null;
    state.transcript = [];
    state.latencies = [];
    state.events = 0;
    lastEnergy = null;
    ui.transcript.replaceChildren();
    ui.latency.replaceChildren();
    ui.interim.textContent = "";
  }

  // The runtime's messages

  function onMessage(raw) {
    let message;
    try { message = JSON.parse(raw); } catch (e) { return; }
    if (message.type === "bye") {
      state.endReason = message.reason;
      ended(message.reason);
      return;
    }
    if (message.type !== "event") return;
    const event = message.event;
    state.events += 1;
    const data = event.data || {};
    switch (event.topic) {
      case "transcript.interim":
        ui.interim.textContent = `${data.role}: ${data.text}`;
        break;
      case "transcript.created":
        ui.interim.textContent = "";
        addLine(data);
        break;
      case "turn.latency":
        addLatency(data);
        break;
      case "agent.interrupted":
        ui.interim.textContent = "(the agent was interrupted)";
        break;
      case "voice.call.completed":
      case "voice.call.failed":
        state.endReason = data.reason;
        setStatus("ended: " + data.reason);
        break;
    }
  }

  function addLine(data) {
    state.transcript.push({ role: data.role, text: data.text, interrupted: !!data.interrupted });
    const item = document.createElement("li");
    item.className = data.role + (data.interrupted ? " interrupted" : "");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = data.role;
    item.append(role, document.createTextNode(data.text + (data.interrupted ? " …" : "")));
    ui.transcript.append(item);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function addLatency(data) {
    state.latencies.push(data);
    const ms = (value) => (value === null || value === undefined ? "–" : `${Math.round(value)} ms`);
    const row = document.createElement("tr");
    for (const cell of [String(state.latencies.length), ms(data.v2v_ms), ms(data.stt_ms), ms(data.llm_first_token_ms),
      ms(data.tts_first_audio_ms)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.append(td);
    }
    ui.latency.append(row);
  }

  // Stats (also for tests: window.voicectlStats())

  async function inboundAudio() {
    if (!pc) return null;
    const report = await pc.getStats();
    let found = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && (s.kind === "audio" || s.mediaType === "audio")) found = s;
    });
    return found;
  }

  async function showStats() {
    const s = await inboundAudio();
    if (!s) return;
    const energy = s.totalAudioEnergy || 0, duration = s.totalSamplesDuration || 0;
    if (lastEnergy && duration > lastEnergy.duration) {
      // Mean power over the last interval -> RMS level 0..1.
      ui.level.value = Math.min(1, Math.sqrt((energy - lastEnergy.energy) / (duration - lastEnergy.duration)) * 4);
    }
    lastEnergy = { energy, duration };
    ui.stats.textContent = `${s.packetsReceived || 0} packets · jitter ${Math.round((s.jitter || 0) * 1000)} ms`;
  }

  window.voicectlStats = async () => {
    const s = await inboundAudio();
    if (!s) return null;
    return {
      totalAudioEnergy: s.totalAudioEnergy || 0, totalSamplesDuration: s.totalSamplesDuration || 0,
      audioLevel: s.audioLevel || 0, packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0,
      jitter: s.jitter || 0, concealedSamples: s.concealedSamples || 0,
    };
  };
  window.voicectlState = () => JSON.parse(JSON.stringify(state));

  // Wiring

  const wanted = fromFragment();
  ui.credential.addEventListener("input", credentialChanged);
  ui.agent.addEventListener("change", credentialChanged);
  ui.load.addEventListener("click", () => loadAgents());
  ui.call.addEventListener("click", call);
  ui.hangup.addEventListener("click", hangup);
  credentialChanged();
  const value = ui.credential.value.trim();
  if (value && !isToken(value) && (!isAdmin(value) || ui.tenant.value)) loadAgents(wanted.agent);
})();
