// Offline Sigstore-bundle verifier built on sigstore-js (@sigstore/verify), used by the interop tests.
//
//   NODE_PATH=$STELLA_TOOLS_DIR/node/node_modules node verify_bundle.js BUNDLE PUBKEY.pem ARTIFACT
//
// Trust material is an empty trusted root plus the one given key, registered under the hint
// base64(SHA-256(DER SPKI)) (so a bundle whose publicKey.hint is wrong fails too). No tlog,
// CT log or timestamp is required. For DSSE bundles the in-toto subjects must include the
// artifact's sha256, as cosign verify-blob-attestation requires. Prints one JSON line; exit 0 = OK.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { PublicKeyDetails } = require('@sigstore/protobuf-specs');
const { toSignedEntity, toTrustMaterial, Verifier } = require('@sigstore/verify');

function emptyTrustedRoot() {
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [],
  };
}

function checkSubjects(bundle, artifact) {
  const env = bundle.content.dsseEnvelope;
  if (env.payloadType !== 'application/vnd.in-toto+json') {
    throw new Error(`unexpected payloadType ${env.payloadType}`);
  }
  const statement = JSON.parse(env.payload.toString('utf8'));
  const want = crypto.createHash('sha256').update(artifact).digest('hex');
  const found = (statement.subject || []).some((s) => s.digest && s.digest.sha256 === want);
  if (!found) throw new Error(`no in-toto subject has the artifact sha256 ${want}`);
  return statement.predicateType;
}

function main(argv) {
  if (argv.length !== 3) throw new Error('usage: verify_bundle.js BUNDLE PUBKEY.pem ARTIFACT');
  const [bundlePath, keyPath, artifactPath] = argv;
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const artifact = fs.readFileSync(artifactPath);
  const spki = crypto.createPublicKey(fs.readFileSync(keyPath)).export({ type: 'spki', format: 'der' });
  const hint = crypto.createHash('sha256').update(spki).digest('base64');
  const keys = { [hint]: { rawBytes: spki, keyDetails: PublicKeyDetails.PKIX_ECDSA_P256_SHA_256 } };
  const verifier = new Verifier(toTrustMaterial(emptyTrustedRoot(), keys),
    { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
  const kind = bundle.content.$case;
  let predicateType;
  if (kind === 'dsseEnvelope') {
    verifier.verify(toSignedEntity(bundle));
    predicateType = checkSubjects(bundle, artifact);
  } else {
    verifier.verify(toSignedEntity(bundle, artifact));
  }
  return { ok: true, content: kind, predicateType };
}

try {
  process.stdout.write(JSON.stringify(main(process.argv.slice(2))) + '\n');
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: `${err.name}: ${err.message}` }) + '\n');
  process.exit(1);
}
