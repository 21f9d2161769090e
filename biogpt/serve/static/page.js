// The BioGPT page: lists the server's models, streams a completion or a task's answer,
// and shows what a task model found. Plain JavaScript, no library, no other host.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "biogpt-api-key"; // sessionStorage: gone when the tab closes

// an endpoint kind (GET /v1/models: model.task.kind) -> what the task menu calls it
const TASK_NAMES = {
  extract: "Extract relations",
  answer: "Answer a question",
  classify: "Classify",
  entities: "Find entities",
};

let models = []; // GET /v1/models' data
let controller = null; // aborts the running request

// --- Talking to the server ------------------------------------------------------------------

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

// The message of an error answer in OpenAI's shape, or the HTTP status.
async function messageOf(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (err) {
    // not JSON: fall through to the status
  }
  return `the server answered ${response.status} ${response.statusText}`;
}

// The JSON events of a server-sent event stream, up to `data: [DONE]`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data: "))
        .map((line) => line.slice(6))
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// --- Status and errors ----------------------------------------------------------------------

function showStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function busy(running) {
  $("run").disabled = running;
  $("stop").disabled = !running;
  $("run-form").setAttribute("aria-busy", String(running));
}

// --- Models and tasks -----------------------------------------------------------------------

async function loadModels() {
  showError("");
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    showError("The server cannot be reached: " + err.message);
    return;
  }
  if (response.status === 401) {
    $("key-box").open = true;
    showError("This server needs an API key: enter it under “API key”.");
    return;
  }
  if (response.status === 503) {
    showStatus("The models are loading…");
    setTimeout(loadModels, 1000);
    return;
  }
  if (!response.ok) {
    showError(await messageOf(response));
    return;
  }
  models = (await response.json()).data;
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(
    ...models.map((m) => new Option(m.task ? `${m.id} (${m.task.name})` : m.id, m.id))
  );
  if (models.some((m) => m.id === chosen)) select.value = chosen;
  showStatus(`${models.length} model${models.length === 1 ? "" : "s"} ready.`);
  updateTasks();
}

// The task menu of the chosen model: a completion always, and its own task if it has one.
function updateTasks() {
  const model = models.find((m) => m.id === $("model").value);
  const options = [new Option("Continue the text", "complete")];
  if (model && model.task) {
    const name = TASK_NAMES[model.task.kind] || model.task.kind;
    options.push(new Option(`${name} (${model.task.name})`, model.task.kind));
  }
  $("task").replaceChildren(...options);
  $("task").value = options[options.length - 1].value; // a task model: its task first
  updateFields();
}

function updateFields() {
  const kind = $("task").value;
  $("question-field").hidden = kind !== "answer";
  $("max-tokens-field").hidden = kind !== "complete";
  $("text-label").textContent = kind === "answer" ? "Context (abstract)" : "Abstract";
}

// --- Running --------------------------------------------------------------------------------

function clearOutput() {
  $("output-prompt").textContent = "";
  $("output-text").textContent = "";
  $("result").hidden = true;
  for (const id of ["unparseable", "decision", "labels", "relations", "entities"]) {
    $(id).hidden = true;
  }
}

// The request that runs the chosen task on the text, streamed.
function request(kind, model, text) {
  if (kind === "complete") {
    const maxTokens = Number($("max-tokens").value) || 64;
    const body = { model, prompt: text, max_tokens: maxTokens, temperature: 0, stream: true };
    return ["/v1/completions", body];
  }
  if (kind === "answer") {
    return ["/v1/tasks/answer", { model, question: $("question").value, context: text, stream: true }];
  }
  return ["/v1/tasks/" + kind, { model, text, stream: true }];
}

async function run(event) {
  event.preventDefault();
  if (controller) return;
  showError("");
  clearOutput();
  const kind = $("task").value;
  const model = $("model").value;
  const text = $("text").value;
  if (!model) {
    showError("No model to run: load the models first (is the API key right?).");
    return;
  }
  if (!text.trim()) {
    showError("Paste a text to run on first.");
    $("text").focus();
    return;
  }
  const [url, body] = request(kind, model, text);
  controller = new AbortController();
  busy(true);
  showStatus("Running…");
  if (kind === "complete") $("output-prompt").textContent = text;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      showError(await messageOf(response));
      showStatus("Failed.");
      return;
    }
    for await (const item of events(response)) {
      if (item.error) throw new Error(item.error.message);
      if (kind === "complete") $("output-text").append(item.choices[0].text);
      else if (item.object === "task.chunk") $("output-text").append(item.text);
      else showResult(kind, item, text);
    }
    showStatus("Done.");
  } catch (err) {
    if (err.name === "AbortError") {
      showStatus("Stopped.");
    } else {
      showError(err.message);
      showStatus("Failed.");
    }
  } finally {
    controller = null;
    busy(false);
  }
}

// --- Results --------------------------------------------------------------------------------

function showResult(kind, result, text) {
  $("result").hidden = false;
  if (result.unparseable) {
    $("unparseable").textContent =
      `${result.unparseable} piece(s) of the answer could not be read as ${result.task}'s format.`;
    $("unparseable").hidden = false;
  }
  const parsed = result.parsed;
  if (kind === "entities") showEntities(text, parsed);
  else if (kind === "extract" && Array.isArray(parsed)) showRelations(parsed);
  else if (kind === "classify" && Array.isArray(parsed)) showLabels(parsed);
  else showDecision(parsed);
}

function showDecision(value) {
  $("decision").textContent = value === null ? "No answer could be read." : String(value);
  $("decision").hidden = false;
}

function showLabels(labels) {
  const items = labels.length ? labels : ["(no label)"];
  $("labels").replaceChildren(...items.map((label) => {
    const li = document.createElement("li");
    li.textContent = label;
    return li;
  }));
  $("labels").hidden = false;
}

function showRelations(relations) {
  const rows = relations.map((r) => {
    const tr = document.createElement("tr");
    for (const value of [r.head, r.tail, r.relation || "—"]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    return tr;
  });
  if (!rows.length) {
    const td = document.createElement("td");
    td.colSpan = 3;
    td.textContent = "No relation found.";
    rows.push(document.createElement("tr"));
    rows[0].append(td);
  }
  $("relations").tBodies[0].replaceChildren(...rows);
  $("relations").hidden = false;
}

// The text with every occurrence of each entity marked (case ignored; where two overlap,
// the earlier and longer one wins). Text nodes only: the model's words are never HTML.
function showEntities(text, entities) {
  const lower = text.toLowerCase();
  const spans = [];
  for (const entity of entities) {
    const needle = entity.text.toLowerCase();
    if (!needle) continue;
    for (let at = lower.indexOf(needle); at >= 0; at = lower.indexOf(needle, at + needle.length)) {
      spans.push({ start: at, end: at + needle.length, type: entity.type });
    }
  }
  spans.sort((a, b) => a.start - b.start || b.end - a.end);
  const box = $("highlighted");
  box.replaceChildren();
  let done = 0;
  for (const span of spans) {
    if (span.start < done) continue;
    box.append(text.slice(done, span.start));
    const mark = document.createElement("mark");
    mark.className = "entity " + (/^[a-z]+$/.test(span.type) ? span.type : "");
    mark.dataset.type = span.type;
    mark.title = span.type;
    mark.textContent = text.slice(span.start, span.end);
    box.append(mark);
    done = span.end;
  }
  box.append(text.slice(done));
  if (!entities.length) box.append(document.createTextNode("\n(no entity found)"));
  $("entities").hidden = false;
}

// --- Wiring ---------------------------------------------------------------------------------

function start() {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", updateTasks);
  $("task").addEventListener("change", updateFields);
  $("run-form").addEventListener("submit", run);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("run-form").requestSubmit();
  });
  loadModels();
}

start();
