#!/usr/bin/env node
// Validates DTDL model files with Microsoft's DTDL parser for JavaScript (@azure/dtdl-parser,
// pinned in package.json): `node validate.js MODEL.json...`. Every file is parsed together, as
// one set of models (so one may refer to another), with nothing resolved from a repository.
//
// Exit 0: the parser took them; it prints one line per interface and its number of contents.
// Exit 1: the parser refused them; it prints each of its errors (cause, then action).
// Exit 2: a file could not be read or the parser could not be loaded.
"use strict";

const fs = require("fs");

let parserLib;
try {
  parserLib = require("@azure/dtdl-parser");
} catch (e) {
  console.error(`cannot load @azure/dtdl-parser (run npm ci in ${__dirname}): ${e.message}`);
  process.exit(2);
}
const { createParser, ModelParsingOption } = parserLib;

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node validate.js MODEL.json...");
    return 2;
  }
  const texts = [];
  for (const file of files) {
    try {
      texts.push(fs.readFileSync(file, "utf8"));
    } catch (e) {
      console.error(`cannot read ${file}: ${e.message}`);
      return 2;
    }
  }
  const parser = createParser(ModelParsingOption.PermitAnyTopLevelElement);
  let parsed;
  try {
    parsed = await parser.parse(texts);
  } catch (e) {
    const errors = Array.isArray(e.errors) ? e.errors : [];
    if (errors.length === 0) {
      // Not a parsing error (a JSON syntax error, a reference it cannot resolve): its message.
      console.error(`refused: ${e.name || "error"}: ${e.message}`);
      return 1;
    }
    console.error(`refused: ${errors.length} error(s)`);
    for (const err of errors) {
      console.error(`- ${err.validationId}: ${err.cause}`);
      console.error(`  action: ${err.action}`);
    }
    return 1;
  }
  const interfaces = Object.values(parsed).filter((x) => x && x.entityKind === "interface");
  for (const i of interfaces) {
    console.log(`ok ${i.id}: ${Object.keys(i.contents || {}).length} contents`);
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`validator failed: ${e.stack || e}`);
    process.exit(2);
  }
);
