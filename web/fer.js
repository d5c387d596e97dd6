// FER in the browser: YuNet finds faces, the shipped int8 classifier reads their emotions, all in this page.
// Every step mirrors the Python path, so the page and `FER().analyse(path)` agree:
//   fer_common/infer/detection.py   FaceDetector (two passes, score rules) and fer_framing, cv2.FaceDetectorYN's decoding
//   fer_common/preprocess.py  BGR -> gray, resize (area when shrinking, bilinear when enlarging), (x - mean) / std
//   fer_common/infer/predictor.py   softmax(logits / T), mirror TTA, class names and preprocessing from the model file
// Nothing leaves the browser: the page fetches its code and the two models, and never sends anything.

const ORT_DIST = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url);
const MODELS = new URL("../models/", import.meta.url);
// Every setting shared with Python comes from settings.json, which Python writes from its own constants
// (fer_common/commands/web.py page_settings; `fer web --write_settings`); tests/commands/test_web.py checks they agree.
const SETTINGS = await (await fetch(new URL("./settings.json", import.meta.url))).json();
const { classifier: CLASSIFIER_FILE, detector: YUNET_FILE, models: MODEL_FILES } = SETTINGS.files;
// fer_common/infer/detection.py: thresholds, framing, the smallest face YuNet sees, OpenCV's FaceDetectorYN settings.
const { scoreThreshold: SCORE_THRESHOLD, smallFaceScore: SMALL_FACE_SCORE, nmsThreshold: NMS_THRESHOLD, topK: TOP_K,
        minFace: YUNET_MIN_FACE, smallFace: SMALL_FACE, frameScale: FRAME_SCALE, strides: STRIDES,
        linearDownscaleMin: LINEAR_DOWNSCALE_MIN } = SETTINGS.detector;
// Images as FER() / inference.py read them (TTA on), live video as real_time_video.py (one pass at its detect
// size, no TTA, probabilities smoothed per face; detection here runs every frame).
export const IMAGE_SETTINGS = SETTINGS.image;
export const VIDEO_SETTINGS = SETTINGS.video;
// fer_common/infer/overlay.py's colours (BGR there), as CSS below.
const COLOURS = SETTINGS.colours;

// ------------------------------------------------------------------ ONNX files: metadata and input shapes
function varint(bytes, pos) {
  let value = 0, scale = 1, b;
  do { b = bytes[pos++]; value += (b & 0x7f) * scale; scale *= 128; } while (b & 0x80);
  return [value, pos];
}

function* fields(bytes, start = 0, end = bytes.length) {   // protobuf fields: {field, wire, head, start, end}
  let pos = start;
  while (pos < end) {
    const head = pos;
    let key, len;
    [key, pos] = varint(bytes, pos);
    const wire = key & 7, field = Math.floor(key / 8);
    const valueStart = pos;
    if (wire === 0) [, pos] = varint(bytes, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) { [len, pos] = varint(bytes, pos); pos += len; }
    else throw new Error(`unsupported protobuf wire type ${wire}`);
    yield { field, wire, head, start: wire === 2 ? pos - len : valueStart, end: pos };
  }
}

function encodeVarint(n) {
  const out = [];
  while (n >= 128) { out.push((n % 128) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return Uint8Array.from(out);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) { out.set(p, pos); pos += p.length; }
  return out;
}

// Copy a message, dropping (null) or rewriting (a function of the field's bytes) some length-delimited fields.
function rewrite(bytes, start, end, rules) {
  const parts = [];
  for (const f of fields(bytes, start, end)) {
    const rule = f.wire === 2 ? rules[f.field] : undefined;
    if (rule === undefined) parts.push(bytes.subarray(f.head, f.end));
    else if (rule !== null) {
      const body = rule(f.start, f.end);
      parts.push(encodeVarint(f.field * 8 + 2), encodeVarint(body.length), body);
    }
  }
  return concat(parts);
}

// What fer_common.model_info.read_onnx_metadata reads: the model's metadata_props (ModelProto field 14).
export function readMetadata(bytes) {
  const text = new TextDecoder(), meta = {};
  for (const f of fields(bytes)) {
    if (f.field !== 14 || f.wire !== 2) continue;
    const entry = {};
    for (const g of fields(bytes, f.start, f.end)) entry[g.field] = text.decode(bytes.subarray(g.start, g.end));
    meta[entry[1]] = entry[2];
  }
  if (!meta.class_names || !meta.preprocessing) throw new Error("the classifier has no FER metadata");
  const calibration = meta.calibration ? JSON.parse(meta.calibration) : null;
  return { classNames: JSON.parse(meta.class_names), preprocessing: JSON.parse(meta.preprocessing),
           temperature: Number((calibration || {}).temperature || 1) };
}

// YuNet's file declares a 640 x 640 input, but OpenCV runs it at each image's size (padded to a multiple of 32),
// and so must we: ONNX Runtime refuses other sizes unless the declared shapes go. Weights are untouched.
function freeShapes(bytes) {
  const tensor = (s, e) => rewrite(bytes, s, e, { 2: null });            // TypeProto.Tensor: drop its shape
  const type = (s, e) => rewrite(bytes, s, e, { 1: tensor });
  const valueInfo = (s, e) => rewrite(bytes, s, e, { 2: type });
  const graph = (s, e) => rewrite(bytes, s, e, { 11: valueInfo, 12: valueInfo, 13: valueInfo });
  return rewrite(bytes, 0, bytes.length, { 7: graph });
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${url} (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

async function webgpuAdapter() {
  try { return Boolean(globalThis.navigator?.gpu && await navigator.gpu.requestAdapter()); } catch { return false; }
}

// The two sessions and what the classifier's file says about itself. backend: "auto" (WebGPU when the browser
// has an adapter, else WebAssembly) or "wasm" (the page's ?backend=wasm); model: a shipped model's short name
// (the page's ?model=: "default", or "ferplus" for the FER+ model), as `fer analyse --checkpoint NAME`.
export async function loadModels(backend = "auto", model = "default") {
  const classifierFile = MODEL_FILES[model];
  if (!classifierFile) throw new Error(`no shipped model '${model}' (choose ${Object.keys(MODEL_FILES).join(", ")})`);
  const gpu = backend !== "wasm" && await webgpuAdapter();
  const ort = await import(new URL(gpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs", ORT_DIST).href);
  ort.env.wasm.wasmPaths = ORT_DIST.href;
  ort.env.logLevel = "error";     // not its warnings about YuNet's declared output sizes, nor about the CPU's name
  const [classifierBytes, yunetBytes] = await Promise.all([
    fetchBytes(new URL(classifierFile, MODELS)), fetchBytes(new URL(YUNET_FILE, MODELS))]);
  const options = { executionProviders: gpu ? ["webgpu", "wasm"] : ["wasm"] };
  let classifier, yunet;
  try {
    classifier = await ort.InferenceSession.create(classifierBytes, options);
    yunet = await ort.InferenceSession.create(freeShapes(yunetBytes), options);
  } catch (e) {
    if (!gpu) throw e;
    console.warn(`WebGPU failed (${e.message || e}): running on WebAssembly`);
    return loadModels("wasm", model);
  }
  return { ort, classifier, yunet, backend: gpu ? "webgpu" : "wasm", model, ...readMetadata(classifierBytes) };
}

// ------------------------------------------------------------------ pixels, as OpenCV handles them
const roundEven = (v) => { const r = Math.round(v); return (r - v === 0.5 && r % 2) ? r - 1 : r; };  // cvRound, np.round
const clampByte = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);

export function rgbaToBgr(rgba, width, height) {
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < out.length; i += 3, j += 4) { out[i] = rgba[j + 2]; out[i + 1] = rgba[j + 1]; out[i + 2] = rgba[j]; }
  return { data: out, width, height, channels: 3 };
}

// cv2.cvtColor(BGR2GRAY) on uint8: fixed point, 14 bits.
function toGray(img) {
  if (img.channels === 1) return img;
  const n = img.width * img.height, out = new Uint8Array(n), d = img.data;
  for (let i = 0, j = 0; i < n; i++, j += 3) out[i] = (d[j] * 1868 + d[j + 1] * 9617 + d[j + 2] * 4899 + 8192) >> 14;
  return { data: out, width: img.width, height: img.height, channels: 1 };
}

function crop(img, x, y, w, h) {
  const c = img.channels, out = new Uint8Array(w * h * c);
  for (let r = 0; r < h; r++) out.set(img.data.subarray(((y + r) * img.width + x) * c, ((y + r) * img.width + x + w) * c), r * w * c);
  return { data: out, width: w, height: h, channels: c };
}

// cv2.INTER_AREA's weights when shrinking (computeResizeAreaTab), flat: destination i takes the source indices
// index[start[i]] ... index[start[i + 1] - 1] with their weights.
function areaTable(ssize, dsize) {
  const scale = 1 / (dsize / ssize), index = [], weight = [], start = [0];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale, cell = Math.min(scale, ssize - fsx1);
    const tap = (sx, w) => { index.push(sx); weight.push(Math.fround(w)); };
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tap(sx1 - 1, (sx1 - fsx1) / cell);
    for (let sx = sx1; sx < sx2; sx++) tap(sx, 1 / cell);
    if (fsx2 - sx2 > 1e-3) tap(sx2, Math.min(Math.min(fsx2 - sx2, 1), cell) / cell);
    start.push(index.length);
  }
  return { start: Int32Array.from(start), index: Int32Array.from(index), weight: Float64Array.from(weight) };
}

// cv2.INTER_LINEAR's source index and 11-bit weights (with INTER_AREA's variant when one axis enlarges).
function linearTable(ssize, dsize, area) {
  const scale = 1 / (dsize / ssize), inv = dsize / ssize, table = [];
  for (let dx = 0; dx < dsize; dx++) {
    let fx = Math.fround((dx + 0.5) * scale - 0.5), sx = Math.floor(fx);
    fx -= sx;
    if (area) { sx = Math.floor(dx * scale); fx = Math.fround(dx + 1 - (sx + 1) * inv); fx = fx <= 0 ? 0 : fx - Math.floor(fx); }
    if (sx < 0) { fx = 0; sx = 0; }
    if (sx >= ssize - 1) { fx = 0; sx = ssize - 1; }
    const a1 = Math.round(fx * 2048);
    table.push([sx, Math.min(sx + 1, ssize - 1), 2048 - a1, a1]);
  }
  return table;
}

// cv2.resize(img, (w, h), interpolation=INTER_AREA or INTER_LINEAR) for uint8 images of 1 or 3 channels.
function resize(img, w, h, interpolation) {
  const { width: sw, height: sh, channels: c, data: src } = img;
  if (sw === w && sh === h) return img;
  const out = new Uint8Array(w * h * c);
  if (interpolation === "area" && sw >= w && sh >= h) {
    const tx = areaTable(sw, w), ty = areaTable(sh, h), rows = new Float64Array(sh * w * c);
    for (let sy = 0; sy < sh; sy++) {       // each source row summed across once
      const base = sy * sw * c, row = sy * w * c;
      for (let dx = 0; dx < w; dx++) for (let t = tx.start[dx]; t < tx.start[dx + 1]; t++) {
        const s0 = base + tx.index[t] * c, wx = tx.weight[t];
        for (let k = 0; k < c; k++) rows[row + dx * c + k] += src[s0 + k] * wx;
      }
    }
    const acc = new Float64Array(w * c);
    for (let dy = 0; dy < h; dy++) {
      acc.fill(0);
      for (let t = ty.start[dy]; t < ty.start[dy + 1]; t++) {
        const row = ty.index[t] * w * c, wy = ty.weight[t];
        for (let i = 0; i < acc.length; i++) acc[i] += rows[row + i] * wy;
      }
      for (let i = 0; i < acc.length; i++) out[dy * w * c + i] = clampByte(roundEven(acc[i]));
    }
    return { data: out, width: w, height: h, channels: c };
  }
  const area = interpolation === "area", tx = linearTable(sw, w, area), ty = linearTable(sh, h, area);
  const rows = [new Int32Array(w * c), new Int32Array(w * c)];
  const horizontal = (sy, buf) => {
    const base = sy * sw * c;
    for (let dx = 0; dx < w; dx++) {
      const [x0, x1, a0, a1] = tx[dx];
      for (let k = 0; k < c; k++) buf[dx * c + k] = src[base + x0 * c + k] * a0 + src[base + x1 * c + k] * a1;
    }
  };
  for (let dy = 0; dy < h; dy++) {
    const [y0, y1, b0, b1] = ty[dy];
    horizontal(y0, rows[0]);
    horizontal(y1, rows[1]);
    for (let i = 0; i < w * c; i++) out[dy * w * c + i] = clampByte((rows[0][i] * b0 + rows[1][i] * b1 + (1 << 21)) >> 22);
  }
  return { data: out, width: w, height: h, channels: c };
}

// ------------------------------------------------------------------ detection: cv2.FaceDetectorYN + FaceDetector
function iou(a, b) {   // rectangles [x, y, w, h]
  const dx = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const dy = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  const inter = Math.max(dx, 0) * Math.max(dy, 0), union = a[2] * a[3] + b[2] * b[3] - inter;
  return union > 0 ? inter / union : 0;
}

// cv2.dnn.NMSBoxes: scores above the threshold, highest first (stable), greedy by IoU; indices kept.
function nms(boxes, scores, scoreThreshold, iouThreshold, topK = 0) {
  let order = scores.map((s, i) => [s, i]).filter(([s]) => s > scoreThreshold);
  order.sort((a, b) => b[0] - a[0]);
  if (topK > 0) order = order.slice(0, topK);
  const keep = [];
  for (const [, i] of order) if (keep.every((k) => iou(boxes[i], boxes[k]) <= iouThreshold)) keep.push(i);
  return keep;
}

// One cv2.FaceDetectorYN.detect: faces as [x, y, w, h, 5 landmarks (x, y), score] in `img`'s pixels.
async function yunetDetect(models, img) {
  const { width: w, height: h, data } = img;
  const padW = (Math.floor((w - 1) / 32) + 1) * 32, padH = (Math.floor((h - 1) / 32) + 1) * 32;
  const blob = new Float32Array(3 * padW * padH);     // BGR planes, 0-255, zero padding right and bottom
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const s = (y * w + x) * 3, d = y * padW + x;
    blob[d] = data[s]; blob[padW * padH + d] = data[s + 1]; blob[2 * padW * padH + d] = data[s + 2];
  }
  const out = await models.yunet.run({ [models.yunet.inputNames[0]]: new models.ort.Tensor("float32", blob, [1, 3, padH, padW]) });
  const faces = [];
  STRIDES.forEach((stride) => {
    const cls = out[`cls_${stride}`].data, obj = out[`obj_${stride}`].data;
    const bbox = out[`bbox_${stride}`].data, kps = out[`kps_${stride}`].data;
    const cols = Math.floor(padW / stride), rows = Math.floor(padH / stride);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const score = Math.fround(Math.sqrt(Math.min(Math.max(cls[i], 0), 1) * Math.min(Math.max(obj[i], 0), 1)));
      if (score < SCORE_THRESHOLD) continue;
      const f = Math.fround, cx = f((c + bbox[i * 4]) * stride), cy = f((r + bbox[i * 4 + 1]) * stride);
      const bw = f(Math.exp(bbox[i * 4 + 2]) * stride), bh = f(Math.exp(bbox[i * 4 + 3]) * stride);
      const face = [f(cx - bw / 2), f(cy - bh / 2), bw, bh];
      for (let n = 0; n < 5; n++) face.push(f((kps[i * 10 + 2 * n] + c) * stride), f((kps[i * 10 + 2 * n + 1] + r) * stride));
      face.push(score);
      faces.push(face);
    }
  });
  if (faces.length <= 1) return faces;
  const boxes = faces.map((f) => f.slice(0, 4).map(Math.trunc));        // OpenCV's Rect2i
  return nms(boxes, faces.map((f) => f[14]), SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K).map((i) => faces[i]);
}

const pyRound = roundEven;   // Python's round(): halves to even

async function detectAt(models, frame, scale) {
  const { width: w, height: h } = frame;
  const shrink = scale >= LINEAR_DOWNSCALE_MIN ? "linear" : "area";     // as FaceDetector._detect_at
  const small = scale >= 1 ? frame
    : resize(frame, Math.max(1, pyRound(w * scale)), Math.max(1, pyRound(h * scale)), shrink);
  const sx = Math.fround(small.width / w), sy = Math.fround(small.height / h);
  return (await yunetDetect(models, small)).map((f) => f.map((v, k) => (k < 14 ? Math.fround(v / (k % 2 ? sy : sx)) : v)));
}

// FaceDetector.detect_faces: one pass on a copy at most detectSize on its shorter side, a finer one for faces
// the first cannot see (minFace), merged, then the score rules.
async function detectFaces(models, frame, { detectSize, minFace }) {
  const { width: w, height: h } = frame;
  if (Math.min(w, h) < YUNET_MIN_FACE) return [];        // no face fits
  const scale = Math.min(1, detectSize / Math.min(frame.width, frame.height));
  let faces = await detectAt(models, frame, scale);
  if (minFace && scale * minFace < YUNET_MIN_FACE) {
    const fine = (await detectAt(models, frame, Math.min(1, YUNET_MIN_FACE / minFace)))
      .filter((f) => Math.sqrt(f[2] * f[3]) * scale < 2 * YUNET_MIN_FACE);
    if (faces.length && fine.length) {
      const all = faces.concat(fine);
      faces = nms(all.map((f) => f.slice(0, 4)), all.map((f) => f[14]), 0, 0.3).sort((a, b) => a - b).map((i) => all[i]);
    } else faces = faces.concat(fine);
  }
  // A face must be a real box that overlaps the frame: YuNet can return nonsense on degenerate inputs.
  faces = faces.filter((f) => f.every(Number.isFinite) && f[2] >= 1 && f[3] >= 1 && f[0] < w && f[1] < h
    && f[0] + f[2] > 0 && f[1] + f[3] > 0);
  return faces.filter((f) => f[14] >= (Math.sqrt(f[2] * f[3]) * scale < SMALL_FACE
    ? Math.max(SMALL_FACE_SCORE, SCORE_THRESHOLD) : SCORE_THRESHOLD));
}

// fer_framing: the square crop FER-2013 would have made of a YuNet face, clipped to the frame (the crop the
// model sees, as FaceDetector.detect gives it); boxes sorted left to right.
function ferFraming(faces, width, height) {
  const boxes = faces.map(([x, y, w, h]) => {
    const side = FRAME_SCALE * Math.sqrt(Math.max(w * h, 1)), cx = x + w * 0.5, cy = y + h * 0.5;
    return clipBox([cx - side / 2, cy - side / 2, side, side].map(roundEven), width, height);
  });
  return boxes.map((b, i) => [b, i]).sort((a, b) => a[0][0] - b[0][0] || a[1] - b[1]).map(([b]) => b);
}

// expand_box(box, 0, shape): the box clipped to the image, at least 1 x 1.
function clipBox([x, y, w, h], width, height) {
  const x0 = Math.min(Math.max(x, 0), width - 1), y0 = Math.min(Math.max(y, 0), height - 1);
  const x1 = Math.max(Math.min(x + w, width), x0 + 1), y1 = Math.max(Math.min(y + h, height), y0 + 1);
  return [x0, y0, x1 - x0, y1 - y0];
}

// ------------------------------------------------------------------ classification: Predictor.predict
async function classify(models, frame, boxes, tta) {
  const { preprocessing: prep, classNames, temperature } = models;
  const [H, W] = prep.input_size, cache = [Math.min(H, 112), Math.min(W, 112)];
  if (prep.channels !== 1) throw new Error("this page runs the 48 x 48 grayscale model only");
  const n = boxes.length, size = H * W, batch = new Float32Array((tta ? 2 : 1) * n * size);
  const mean = Math.fround(prep.mean[0] * 255), std = Math.fround(prep.std[0] * 255);
  boxes.forEach((box, i) => {
    let face = toGray(crop(frame, ...clipBox(box, frame.width, frame.height)));
    for (const [h, w] of [cache, [H, W]]) {   // preprocess.to_input_size: via the cache size, as in training
      const shrinking = face.height > h || face.width > w;
      face = resize(face, w, h, shrinking ? "area" : "linear");
    }
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const v = Math.fround((face.data[y * W + x] - mean) / std);
      batch[i * size + y * W + x] = v;
      if (tta) batch[(n + i) * size + y * W + (W - 1 - x)] = v;     // the mirror image, second half of the batch
    }
  });
  const input = new models.ort.Tensor("float32", batch, [(tta ? 2 : 1) * n, 1, H, W]);
  const { logits } = await models.classifier.run({ input }, ["logits"]);
  const k = classNames.length, softmax = (row) => {     // calibration.softmax(logits, T), in float64
    const z = Array.from(logits.data.subarray(row * k, row * k + k), (v) => v / temperature), m = Math.max(...z);
    const e = z.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
    return e.map((v) => Math.fround(v / s));
  };
  return boxes.map((_, i) => {
    const p = softmax(i);
    return tta ? softmax(n + i).map((q, j) => Math.fround((p[j] + q) / 2)) : p;
  });
}

// One image (RGBA from a canvas) -> plain results: {width, height, faces: [{box, probabilities, top}], ms}.
export async function analyse(models, rgba, width, height, settings = IMAGE_SETTINGS) {
  const t0 = performance.now();
  const frame = rgbaToBgr(rgba, width, height);
  const boxes = ferFraming(await detectFaces(models, frame, settings), width, height);
  const t1 = performance.now();
  const probs = boxes.length ? await classify(models, frame, boxes, settings.tta) : [];
  const t2 = performance.now();
  const faces = boxes.map((box, i) => {
    const probabilities = Object.fromEntries(models.classNames.map((c, j) => [c, probs[i][j]]));
    const top = models.classNames[probs[i].indexOf(Math.max(...probs[i]))];
    return { box, probabilities, top };
  });
  return { width, height, faces, ms: { detect: t1 - t0, classify: t2 - t1 } };
}

// ------------------------------------------------------------------ live video: ids and smoothing (FaceTracker)
// fer_common/video/tracking.py's FaceTracker with a detection every frame: greedy IoU matching against each track's
// extrapolated box, a face missed once keeps its id (not shown), new faces get new ids, probabilities smoothed.
export class Tracker {
  constructor(smooth = VIDEO_SETTINGS.smooth, iouThreshold = SETTINGS.tracker.iouThreshold,
              maxMissed = SETTINGS.tracker.maxMissed) {
    Object.assign(this, { smooth, iouThreshold, maxMissed, tracks: [], nextId: 1, frame: 0 });
  }

  // Adds `id` and the smoothed probabilities `shown` (in class order) to each of this frame's faces.
  update(faces, classNames) {
    const frame = ++this.frame, at = (t) => t.box.map((v, k) => v + t.velocity[k] * (frame - t.frame));
    const pairs = [];
    this.tracks.forEach((t, ti) => faces.forEach((f, fi) => pairs.push([iou(at(t), f.box), ti, fi])));
    pairs.sort((a, b) => b[0] - a[0] || b[1] - a[1] || b[2] - a[2]);
    const matchedT = new Map(), matchedF = new Set();
    for (const [score, ti, fi] of pairs) {
      if (score < this.iouThreshold) break;
      if (matchedT.has(ti) || matchedF.has(fi)) continue;
      const t = this.tracks[ti];
      t.velocity = faces[fi].box.map((v, k) => (v - t.box[k]) / (frame - t.frame));
      Object.assign(t, { box: faces[fi].box, frame, missed: 0 });
      matchedT.set(ti, fi);
      matchedF.add(fi);
    }
    const kept = this.tracks.filter((t, ti) => (matchedT.has(ti) ? true : ++t.missed <= this.maxMissed));
    const owner = new Map([...matchedT].map(([ti, fi]) => [fi, this.tracks[ti]]));
    faces.forEach((f, fi) => {
      if (!owner.has(fi)) {
        const t = { id: this.nextId++, box: f.box, velocity: [0, 0, 0, 0], frame, missed: 0, p: null };
        kept.push(t);
        owner.set(fi, t);
      }
      const t = owner.get(fi), now = classNames.map((c) => f.probabilities[c]);
      t.p = t.p ? t.p.map((v, j) => this.smooth * v + (1 - this.smooth) * now[j]) : now;
      f.id = t.id;
      f.shown = t.p;
    });
    this.tracks = kept;
  }
}

// ------------------------------------------------------------------ drawing: what real_time_video.py draws
const css = (name) => { const [b, g, r] = COLOURS[name] || [255, 255, 255]; return `rgb(${r},${g},${b})`; };

export function draw(ctx, faces, classNames, fps) {
  const { width, height } = ctx.canvas;
  const scale = Math.max(0.4, Math.min(width, height) / 800), font = Math.round(30 * scale);
  const pad = Math.max(2, Math.round(font * 0.3)), rowH = font + pad, lineW = Math.max(1, Math.round(Math.min(width, height) / 360));
  ctx.font = `${font}px sans-serif`;
  ctx.textBaseline = "top";
  const nameW = Math.max(...classNames.map((c) => ctx.measureText(c).width)), pctW = ctx.measureText("100%").width;
  const barW = Math.max(24, Math.round(nameW * 0.9)), panelW = pad * 4 + nameW + barW + pctW, panelH = pad + 3 * rowH;
  const placed = [];
  const hud = (text, right, colour) => {
    const w = ctx.measureText(text).width + 2 * pad, rect = [right ? width - w : 0, 0, w, font + 2 * pad];
    ctx.fillStyle = "rgba(0,0,0,0.7)"; ctx.fillRect(...rect);
    ctx.fillStyle = colour; ctx.fillText(text, rect[0] + pad, pad);
    placed.push(rect);
  };
  if (fps != null) hud(`FPS ${fps.toFixed(1)}`, false, "#fff");
  if (faces.length >= 2) {
    const group = classNames.map((_, j) => faces.reduce((s, f) => s + (f.shown || classNames.map((c) => f.probabilities[c]))[j], 0) / faces.length);
    const top = group.indexOf(Math.max(...group));
    hud(`Group: ${classNames[top]} ${Math.round(group[top] * 100)}%`, true, css(classNames[top]));
  }
  for (const f of faces) {
    const p = f.shown || classNames.map((c) => f.probabilities[c]);
    const top = classNames[p.indexOf(Math.max(...p))];
    const [x, y, w, h] = f.box;
    ctx.strokeStyle = css(top); ctx.lineWidth = lineW; ctx.strokeRect(x, y, w, h);
    const text = `${f.id != null ? `#${f.id} ` : ""}${top}`, tw = ctx.measureText(text).width + 2 * pad, th = font + pad;
    const ly = y - th < 0 ? y : y - th;
    ctx.fillStyle = css(top); ctx.fillRect(x, ly, tw, th);
    ctx.fillStyle = "#000"; ctx.fillText(text, x + pad, ly + pad / 2);
    placed.push([x, ly, tw, th]);
  }
  for (const f of faces) {   // each panel right of its face, else left, below, above; clamped into the frame
    const [x, y, w, h] = f.box, gap = Math.max(3, pad);
    const inFrame = ([px, py]) => [Math.min(Math.max(px, 0), Math.max(width - panelW, 0)), Math.min(Math.max(py, 0), Math.max(height - panelH, 0)), panelW, panelH];
    const candidates = [[x + w + gap, y], [x - gap - panelW, y], [x, y + h + gap], [x, y - gap - panelH]].map(inFrame);
    const rect = candidates.find((r) => placed.every((q) => iou(r, q) === 0) && faces.every((g) => iou(r, g.box) === 0))
      || candidates.find((r) => placed.every((q) => iou(r, q) === 0)) || candidates[0];
    placed.push(rect);
    ctx.fillStyle = "rgba(0,0,0,0.7)"; ctx.fillRect(...rect);
    const p = f.shown || classNames.map((c) => f.probabilities[c]);
    const order = p.map((v, j) => [v, j]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    order.forEach(([v, j], row) => {
      const top = rect[1] + pad + row * rowH, bx = rect[0] + 2 * pad + nameW;
      ctx.fillStyle = "#fff"; ctx.fillText(classNames[j], rect[0] + pad, top);
      ctx.fillStyle = "rgb(90,90,90)"; ctx.fillRect(bx, top + 1, barW, font - 2);
      ctx.fillStyle = css(classNames[j]); ctx.fillRect(bx, top + 1, Math.round(v * barW), font - 2);
      ctx.fillStyle = "#fff"; ctx.fillText(`${Math.round(v * 100)}%`, bx + barW + pad, top);
    });
  }
}

// ------------------------------------------------------------------ the page
function page() {
  const $ = (id) => document.getElementById(id);
  const view = $("view"), ctx = view.getContext("2d"), frameCanvas = document.createElement("canvas");
  const frameCtx = frameCanvas.getContext("2d", { willReadFrequently: true });
  const status = (text) => { $("status").textContent = text; };
  const params = new URLSearchParams(location.search);
  let models = null, stream = null, loop = 0, last = null;

  const publish = (results) => {     // for people (the JSON under the picture) and for tests
    last = { results, frame: frameCanvas };
    window.ferResults = results;
    $("results").textContent = JSON.stringify(results, null, 1);
  };
  // The last analysed frame with its results, for tests: the PNG is exactly the pixels the models saw.
  window.ferSnapshot = () => last && { results: last.results, png: last.frame.toDataURL("image/png") };

  const grab = (source, width, height) => {
    if (frameCanvas.width !== width || frameCanvas.height !== height) {   // resizing a canvas clears it: not per frame
      frameCanvas.width = view.width = width;
      frameCanvas.height = view.height = height;
    }
    frameCtx.drawImage(source, 0, 0, width, height);
    return frameCtx.getImageData(0, 0, width, height).data;
  };

  const clearView = () => {          // no picture of an earlier file or the camera under a new message
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, view.width, view.height);
  };

  const stop = () => {
    loop++;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("video").pause();
    $("video").removeAttribute("src");
    $("video").srcObject = null;
  };

  async function showImage(file) {
    stop();
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch (e) {
      clearView();
      status(`${file.name}: not an image this browser can decode (${e.message || e})`);
      return;
    }
    const rgba = grab(bitmap, bitmap.width, bitmap.height);
    const settings = { ...IMAGE_SETTINGS, tta: $("tta").checked };
    const results = await analyse(models, rgba, bitmap.width, bitmap.height, settings);
    results.faces.forEach((f, i) => { f.id = i + 1; });      // face numbers, left to right
    ctx.drawImage(frameCanvas, 0, 0);
    draw(ctx, results.faces, models.classNames, null);
    publish({ source: file.name, kind: "image", backend: models.backend, settings, ...results });
    status(`${file.name}: ${results.faces.length} face(s) in ${(results.ms.detect + results.ms.classify).toFixed(0)} ms`);
  }

  async function runVideo(name) {
    const video = $("video"), id = ++loop, tracker = new Tracker(VIDEO_SETTINGS.smooth), times = [];
    try {
      await video.play();
    } catch (e) {     // e.g. an MPEG-4 Part 2 (mp4v) file: browsers decode H.264, VP8/VP9 and AV1
      clearView();
      status(`${name}: this browser cannot play it (${e.message}); try an H.264 .mp4 or a .webm`);
      return;
    }
    let frames = 0;
    while (id === loop) {
      if (video.videoWidth && video.readyState >= 2) {
        const rgba = grab(video, video.videoWidth, video.videoHeight);
        const settings = { ...VIDEO_SETTINGS, tta: $("tta").checked };
        const results = await analyse(models, rgba, video.videoWidth, video.videoHeight, settings);
        if (id !== loop) break;
        tracker.update(results.faces, models.classNames);
        const now = performance.now();
        times.push(now);
        while (times.length > 2 && now - times[0] > 2000) times.shift();
        const fps = times.length > 1 ? (times.length - 1) / ((now - times[0]) / 1000) : 0;
        ctx.drawImage(frameCanvas, 0, 0);
        draw(ctx, results.faces, models.classNames, fps);
        publish({ source: name, kind: "video", backend: models.backend, settings, frame: ++frames, fps, ...results });
      }
      // The next frame once this one is done: as fast as the models go, never faster than the source.
      await new Promise((resolve) => (video.requestVideoFrameCallback ? video.requestVideoFrameCallback(resolve) : setTimeout(resolve, 0)));
    }
  }

  async function startCamera() {
    stop();
    $("file").value = "";              // the chooser no longer names the file shown before
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      clearView();
      status(`no camera: ${e.message}`);
      return;
    }
    $("video").srcObject = stream;
    status("camera: running");
    await runVideo("camera");
  }

  $("camera").addEventListener("click", () => startCamera());
  $("stop").addEventListener("click", () => { stop(); status("stopped"); });
  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    if (file.type.startsWith("video/")) {
      stop();
      $("video").src = URL.createObjectURL(file);
      $("video").loop = true;
      status(`${file.name}: running`);
      await runVideo(file.name);
    } else await showImage(file);
  });

  const chosen = params.get("model") || "default";
  $("model").value = chosen;
  $("model").addEventListener("change", () => {          // another model: the page again, with ?model=
    params.set("model", $("model").value);
    location.search = params.toString();
  });
  status("loading the models ...");
  loadModels(params.get("backend") || "auto", chosen).then((m) => {
    models = m;
    window.ferReady = { backend: m.backend, model: m.model, classNames: m.classNames, temperature: m.temperature };
    for (const el of document.querySelectorAll("button, input, select")) el.disabled = false;
    status(`ready (ONNX Runtime Web, ${m.backend}): start the camera or choose a file`);
  }).catch((e) => { window.ferError = String(e); status(`error: ${e.message || e}`); });
}

if (globalThis.document) page();
