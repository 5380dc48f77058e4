// Typeset the \( ... \) and \[ ... \] spans that pymdownx.arithmatex leaves in
// the page, with the vendored KaTeX. Material's instant loading swaps pages
// without a reload, so this runs on each page it shows (document$).
(function () {
  function typeset() {
    document.querySelectorAll(".arithmatex").forEach(function (element) {
      renderMathInElement(element, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(typeset);
  } else {
    document.addEventListener("DOMContentLoaded", typeset);
  }
})();
