// The wall board: today's leaderboard of one team, in large type, updated
// live from `leaderboard.updated` on the stream.

import {api, liveStream} from './api.js';
import {clear, h} from './dom.js';

const METRICS = [
  ['engagements', 'Engagements'],
  ['calls_answered', 'Calls answered'],
  ['calls_outbound', 'Calls made'],
  ['sms_outbound', 'SMS sent'],
  ['talk_seconds', 'Talk time (s)'],
];

export function boardPage(main, query, go) {
  const metric = METRICS.some(([m]) => m === query.get('metric')) ? query.get('metric') : 'engagements';
  const team = (query.get('team') || '').trim();
  const table = h('tbody', {id: 'board-rows'});
  const status = h('p', {class: 'board-status', 'aria-live': 'polite'});
  const teamInput = h('input', {id: 'board-team', name: 'team', value: team, placeholder: 'every agent'});
  const metricSelect = h('select', {id: 'board-metric', name: 'metric'},
    METRICS.map(([m, label]) => h('option', {value: m, selected: m === metric}, label)));
  const form = h('form', {class: 'board-controls'},
    h('label', {for: 'board-team'}, 'Team'), teamInput,
    h('label', {for: 'board-metric'}, 'Metric'), metricSelect,
    h('button', {type: 'submit'}, 'Show'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams({metric: metricSelect.value});
    if (teamInput.value.trim()) q.set('team', teamInput.value.trim());
    go('#/board?' + q);
  });
  const label = METRICS.find(([m]) => m === metric)[1];
  clear(main, h('section', {class: 'board', 'aria-labelledby': 'board-title'},
    h('h1', {id: 'board-title'}, `${label} today · ${team || 'every agent'}`), form, status,
    h('table', {},
      h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, '#'), h('th', {scope: 'col'}, 'Agent'),
        h('th', {scope: 'col', class: 'num'}, label), h('th', {scope: 'col', class: 'num'}, 'vs yesterday'))),
      table)));

  let version = 0;
  function render(items) {
    version += 1;
    table.dataset.version = String(version);
    clear(table, items.map((item) => h('tr', {dataset: {agent: item.agent.id}},
      h('td', {class: 'rank'}, item.rank),
      h('td', {class: 'agent'}, item.agent.name || item.agent.id),
      h('td', {class: 'num value'}, item.value),
      h('td', {class: 'num change'}, (item.change > 0 ? '+' : '') + item.change))));
    if (items.length === 0) table.append(h('tr', {}, h('td', {colspan: 4, class: 'muted'}, 'Nothing yet today')));
  }

  const q = new URLSearchParams({metric, period: 'today'});
  if (team) q.set('team', team);
  api('/v1/analytics/leaderboard?' + q)
    .then((board) => render(board.items))
    .catch((e) => { status.textContent = e.message; });

  const live = {leaderboard: metric, types: 'call.incoming'};
  if (team) live.team = team;
  const stream = liveStream(live, {
    open: () => { status.textContent = 'Live'; main.querySelector('.board').dataset.live = 'true'; },
    'leaderboard.updated': (update) => {
      if (update.metric === metric && (update.team || '') === team) render(update.items);
    },
  });
  return () => stream.close();
}
