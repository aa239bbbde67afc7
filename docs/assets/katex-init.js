// Render the $...$ and $$...$$ spans that pymdownx.arithmatex (generic mode) leaves in the page,
// on first load and after each instant-navigation page change of mkdocs-material.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
