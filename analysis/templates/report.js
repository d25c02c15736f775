// The HTML report's page logic (analysis/report_html.py): sortable tables and the image browser.
(function(){
const DATA = JSON.parse(document.getElementById('browser-data').textContent);
const $ = id => document.getElementById(id);
// sortable tables: click a header (numbers by data-v, text otherwise)
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = !th.classList.contains('asc');
  th.parentNode.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(asc ? 'asc' : 'desc');
  const key = r => { const c = r.cells[th.cellIndex]; const v = c.dataset.v;
    return v === undefined ? c.textContent : (v === '' ? NaN : parseFloat(v)); };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    const num = typeof x === 'number' && typeof y === 'number';
    if (num && (isNaN(x) || isNaN(y))) return isNaN(x) - isNaN(y);  // NaN last either way
    const d = num ? x - y : String(x).localeCompare(String(y));
    return asc ? d : -d; }).forEach(r => body.appendChild(r));
}));
const datasets = Object.keys(DATA);
if (!datasets.length) return;
const dsSel = $('ds'), imSel = $('im'), rate = $('rate'), zoom = $('zoom');
datasets.forEach(d => dsSel.add(new Option(d, d)));
let cards = [], pick = {a: 0, b: 1};
function entry() { return DATA[dsSel.value][imSel.value]; }
function rates() { const s = new Set();
  entry().series.forEach(x => x.points.forEach(p => { if (p.bpp !== null) s.add(p.bpp); }));
  return [...s].sort((a, b) => a - b); }
function fillImages() { imSel.innerHTML = ''; Object.keys(DATA[dsSel.value]).forEach(i => imSel.add(new Option(i, i))); }
function fillRates() { const r = rates(); rate.max = Math.max(r.length - 1, 0);
  rate.value = Math.floor(r.length / 2);
  // small images start magnified (nearest neighbour) to about 256 px
  zoom.value = String([8, 4, 2, 1].find(z => z === 1 || entry().side * z <= 256)); }
function nearest(points, bpp) { // the point nearest in log bpp (a series without rate: its one point)
  let best = points[0], d = Infinity;
  points.forEach(p => { if (p.bpp === null) return; const e = Math.abs(Math.log(p.bpp) - Math.log(bpp));
    if (e < d) { d = e; best = p; } });
  return best; }
function fmt(m) { return Object.entries(m).filter(([k, v]) => v !== null)
  .map(([k, v]) => k + ' ' + (typeof v === 'number' ? v.toPrecision(4) : v)).join(', '); }
function render() {
  const e = entry(), r = rates(), bpp = r[+rate.value] || 0, z = +zoom.value;
  $('ratelabel').textContent = r.length ? bpp.toFixed(4) + ' bpp' : '(no rates)';
  cards = [{name: 'original', src: e.original, cap: 'original' + (e.note ? ' (' + e.note + ')' : '')}];
  e.series.forEach(s => { const p = nearest(s.points, bpp);
    cards.push({name: s.name, src: p.src, cap: s.name + ' ' + p.label +
      (p.bpp !== null ? ' @ ' + p.bpp.toFixed(4) + ' bpp' : '') + (fmt(p.metrics) ? ': ' + fmt(p.metrics) : '') +
      (p.note ? ' (' + p.note + ')' : '')}); });
  pick.a = Math.min(pick.a, cards.length - 1); pick.b = Math.min(pick.b, cards.length - 1);
  const grid = $('grid'); grid.innerHTML = '';
  cards.forEach((c, i) => {
    const card = document.createElement('div'); card.className = 'card' + (i === pick.a ? ' a' : '') + (i === pick.b ? ' b' : '');
    const view = document.createElement('div'); view.className = 'view';
    const img = document.createElement('img'); img.className = 'px'; img.src = c.src; img.alt = c.name;
    img.onload = () => { img.width = img.naturalWidth * z; };
    view.appendChild(img); card.appendChild(view);
    const cap = document.createElement('div'); cap.className = 'cap'; cap.textContent = c.cap; card.appendChild(cap);
    card.title = 'click: left of the slider; shift+click: right';
    card.addEventListener('click', ev => { if (ev.shiftKey) pick.b = i; else pick.a = i; render(); });
    view.addEventListener('scroll', () => document.querySelectorAll('#grid .view').forEach(v => {
      if (v !== view) { v.scrollLeft = view.scrollLeft; v.scrollTop = view.scrollTop; } }));
    grid.appendChild(card); });
  const A = $('cmpA'), B = $('cmpB');
  A.src = cards[pick.a].src; B.src = cards[pick.b].src;
  A.onload = () => { A.width = A.naturalWidth * z; }; B.onload = () => { B.width = B.naturalWidth * z; };
  $('cmplabel').textContent = 'left: ' + cards[pick.a].name + ' | right: ' + cards[pick.b].name;
  split(); }
function split() { $('cmpB').style.clipPath = 'inset(0 0 0 ' + $('slider').value + '%)'; }
dsSel.onchange = () => { fillImages(); fillRates(); render(); };
imSel.onchange = () => { fillRates(); render(); };
rate.oninput = render; zoom.onchange = render; $('slider').oninput = split;
fillImages(); fillRates(); render();
})();
