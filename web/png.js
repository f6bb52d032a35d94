// PNG in and out, and the strength blend, exactly as the server computes them.
// The page blends the model's layer with the Lanczos layer itself, so a new strength shows at once;
// its own PNG codec (not a canvas) keeps 16-bit levels, alpha and the ICC profile, which a canvas
// would round, premultiply or drop. Plain browser JavaScript: the browser's (de)compression streams.
"use strict";

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const CHANNELS = { 0: 1, 2: 3, 4: 2, 6: 4 }; // colour type -> samples per pixel (the server writes no palette)
const HAS_ALPHA = { 0: false, 2: false, 4: true, 6: true };

async function streamThrough(bytes, transform) {
  const stream = new Blob([bytes]).stream().pipeThrough(transform);
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// -> { width, height, depth, channels, alpha, samples (Uint8Array or Uint16Array), before, after }
// ``before`` and ``after`` are the chunks around the pixel data, written back unchanged by encodePng.
async function decodePng(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (!PNG_SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG");
  const before = [];
  const after = [];
  const pixelData = [];
  let header = null;
  for (let position = 8; position < bytes.length;) {
    const length = view.getUint32(position);
    const type = String.fromCharCode(...bytes.subarray(position + 4, position + 8));
    const chunk = bytes.subarray(position, position + 12 + length);
    if (type === "IHDR") {
      header = { width: view.getUint32(position + 8), height: view.getUint32(position + 12),
        depth: bytes[position + 16], colourType: bytes[position + 17], interlace: bytes[position + 20] };
    }
    if (type === "IDAT") pixelData.push(bytes.subarray(position + 8, position + 8 + length));
    else (pixelData.length ? after : before).push(chunk);
    position += 12 + length;
  }
  const channels = CHANNELS[header.colourType];
  if (!channels || header.interlace || (header.depth !== 8 && header.depth !== 16)) {
    throw new Error(`unsupported PNG layout (colour type ${header.colourType}, depth ${header.depth})`);
  }
  const raw = await streamThrough(concat(pixelData), new DecompressionStream("deflate"));
  const bytesPerPixel = channels * header.depth / 8;
  const rows = unfilter(raw, header.width * bytesPerPixel, header.height, bytesPerPixel);
  const samples = header.depth === 8 ? rows : bigEndian16(rows);
  return { width: header.width, height: header.height, depth: header.depth, channels,
    alpha: HAS_ALPHA[header.colourType], samples, before, after };
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

function unfilter(raw, stride, height, bpp) {
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = y * stride;
    for (let x = 0; x < stride; x++) {
      const left = x >= bpp ? out[row + x - bpp] : 0;
      const up = y > 0 ? out[row - stride + x] : 0;
      const upLeft = y > 0 && x >= bpp ? out[row - stride + x - bpp] : 0;
      let predicted = 0;
      if (filter === 1) predicted = left;
      else if (filter === 2) predicted = up;
      else if (filter === 3) predicted = (left + up) >> 1;
      else if (filter === 4) predicted = paeth(left, up, upLeft);
      out[row + x] = (line[x] + predicted) & 0xff;
    }
  }
  return out;
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

function bigEndian16(bytes) {
  const out = new Uint16Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = (bytes[2 * i] << 8) | bytes[2 * i + 1];
  return out;
}

// strength x model + (1 - strength) x lanczos on the colour samples; alpha is the model layer's.
function blendLayers(model, lanczos, strength) {
  const out = new model.samples.constructor(model.samples.length);
  const colours = model.alpha ? model.channels - 1 : model.channels;
  for (let i = 0; i < out.length; i++) {
    out[i] = i % model.channels < colours
      ? Math.round(strength * model.samples[i] + (1 - strength) * lanczos.samples[i])
      : model.samples[i];
  }
  return out;
}

// A PNG of ``samples`` in the layout of ``like`` (a decodePng result), with its other chunks kept.
async function encodePng(like, samples) {
  const stride = like.width * like.channels * like.depth / 8;
  const raw = new Uint8Array((stride + 1) * like.height);
  for (let y = 0; y < like.height; y++) {
    const row = y * (stride + 1) + 1; // filter byte 0: none
    const first = y * like.width * like.channels;
    if (like.depth === 8) {
      raw.set(samples.subarray(first, first + stride), row);
    } else {
      for (let i = 0; i < stride / 2; i++) {
        raw[row + 2 * i] = samples[first + i] >> 8;
        raw[row + 2 * i + 1] = samples[first + i] & 0xff;
      }
    }
  }
  const compressed = await streamThrough(raw, new CompressionStream("deflate"));
  return new Blob([new Uint8Array(PNG_SIGNATURE), ...like.before, chunk("IDAT", compressed), ...like.after],
    { type: "image/png" });
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set([...type].map((c) => c.charCodeAt(0)), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

// 8-bit RGBA for a canvas, from any layout decodePng gives.
function toImageData(image, samples) {
  const rgba = new Uint8ClampedArray(image.width * image.height * 4);
  const shift = image.depth === 16 ? 257 : 1;
  const colours = image.alpha ? image.channels - 1 : image.channels;
  for (let p = 0, s = 0; p < rgba.length; p += 4, s += image.channels) {
    for (let c = 0; c < 3; c++) rgba[p + c] = Math.round(samples[s + (colours === 1 ? 0 : c)] / shift);
    rgba[p + 3] = image.alpha ? Math.round(samples[s + colours] / shift) : 255;
  }
  return new ImageData(rgba, image.width, image.height);
}
