def page(url: str) -> str:
    return f"Globex serves {url}\n"
