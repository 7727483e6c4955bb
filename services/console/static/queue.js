// Queue page: n claims the next item (with the current filters), / jumps to the SKU filter.
"use strict";

document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "select" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "n") {
    event.preventDefault();
    document.getElementById("claim-next-form").submit();
  } else if (event.key === "/") {
    event.preventDefault();
    document.querySelector("#filters input[name=sku]").focus();
  }
});
