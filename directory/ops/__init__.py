"""Operations: metrics, the public publication page, the status overview shared by page and CLI."""
