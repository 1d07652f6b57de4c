"""A small invented dataset for the executor, kill and fault tests (three themes, distinct users)."""

from personalens.data.records import Dataset, Interaction, Item, freeze_fields

THEMES = {
    "space": ["space opera", "alien planet", "starship crew", "galaxy war", "orbit station", "moon base"],
    "crime": ["heist crew", "detective noir", "mafia family", "bank robbery", "police chase", "court drama"],
    "cook": ["baking show", "chef kitchen", "street food", "pastry class", "wine tasting", "market tour"],
}


def jobs_dataset(n_users: int = 6, *, hater: bool = False) -> Dataset:
    """``hater`` adds a user who liked nothing (their build fails: no behaviour to build personas from)."""
    items, rows = {}, []
    for theme, titles in THEMES.items():
        for i, title in enumerate(titles):
            item_id = f"{theme}{i}"
            items[item_id] = Item(item_id, f"{title.title()} ({2000 + i})", freeze_fields([("genres", theme)]))
    for u in range(n_users):
        t = 0
        for theme in THEMES:
            for i in range(6):
                rating = 5.0 if (u + i) % 4 else 1.0
                rows.append(Interaction(f"u{u}", f"{theme}{i}", rating, None, float(t)))
                t += 1
    if hater:
        rows.append(Interaction("hater", "space0", 1.0, None, 0.0))
    return Dataset("toy", items, rows, (1.0, 5.0, 1.0))
