"""The key footer: Textual's Footer, which leaves out the least needed keys (not squeezes them) when they do not fit."""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby

from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup

# actions in the order they are dropped when the footer is too narrow (the help screen lists every key)
DROP_FIRST = ("filter", "search", "next_slot", "toggle_log", "edit", "idea", "open_selected", "choose", "pane",
              "start", "abort", "pause", "resume", "app.help", "help", "quit")


def _action_name(action: str) -> str:
    return action.split("(", 1)[0]


class KeyFooter(Footer):
    """Every key on one line: a key that does not fit is left out whole, the least needed first (DROP_FIRST)."""

    def compose(self):
        if not self._bindings_ready:
            return
        bindings = [(b, enabled, tooltip) for (_, b, enabled, tooltip) in self.screen.active_bindings.values()
                    if b.show]
        by_action: dict[str, list] = defaultdict(list)
        for b, enabled, tooltip in bindings:
            by_action[b.action].append((b, enabled, tooltip))
        # items: (group or None, [(binding, enabled, tooltip)], width on screen)
        items = []
        for group, multi in groupby(by_action.values(), lambda m: m[0][0].group):
            multi = list(multi)
            if group is not None and len(multi) > 1:
                width = sum(len(self.app.get_key_display(m[0][0])) for m in multi) + len(group.description) + 2
                items.append((group, [m[0] for m in multi], width))
            else:
                for m in multi:
                    b = m[0][0]
                    pad = 2 if self.compact else 3
                    items.append((None, [m[0]], len(self.app.get_key_display(b)) + len(b.description) + pad))
        room = (self.size.width or self.app.size.width) - 1
        order = {a: i for i, a in enumerate(DROP_FIRST)}

        def rank(item) -> int:
            return order.get(_action_name(item[1][0][0].action), -1)

        while items and sum(w for _, _, w in items) > room:
            items.remove(min(items, key=rank))
        # one grid column per widget yielded below: a group is its keys' KeyGroup and its label
        self.styles.grid_size_columns = sum(2 if group is not None else 1 for group, _, _ in items)
        for group, multi, _ in items:
            if group is not None:
                with KeyGroup(classes="-compact" if group.compact else ""):
                    for b, enabled, tooltip in multi:
                        yield FooterKey(b.key, self.app.get_key_display(b), "", b.action, disabled=not enabled,
                                        tooltip=tooltip or b.description, classes="-grouped"
                                        ).data_bind(compact=Footer.compact)
                yield FooterLabel(group.description)
            else:
                b, enabled, tooltip = multi[0]
                yield FooterKey(b.key, self.app.get_key_display(b), b.description, b.action, disabled=not enabled,
                                tooltip=tooltip).data_bind(compact=Footer.compact)

    def on_resize(self) -> None:
        self.call_after_refresh(self.recompose)
