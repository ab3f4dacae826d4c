"""Component-class styles of a widget, resolved once per theme instead of on every repaint."""

from __future__ import annotations

from rich.style import Style


class ComponentStyles:
    """`styles("best")` is `widget.get_component_rich_style(prefix + "best", partial=True)`, cached until the app's
    theme changes. Textual resolves each call through the stylesheet; a widget repainted once a second with a
    dozen of them spent a third of its time there. The rules must not depend on the widget's pseudo-classes
    (focus, hover): none of this app's component-class rules do."""

    def __init__(self, widget, prefix: str):
        self.widget = widget
        self.prefix = prefix
        self._theme = None
        self._cache: dict[str, Style] = {}

    def __call__(self, name: str) -> Style:
        theme = self.widget.app.theme
        if theme != self._theme:
            self._theme, self._cache = theme, {}
        style = self._cache.get(name)
        if style is None:
            style = self._cache[name] = self.widget.get_component_rich_style(self.prefix + name, partial=True)
        return style
