"""A screenshot of the HParams table with chosen columns (a script, not a test; the picture of docs/tensorboard.md):

    python bench/hparams_screenshot.py http://localhost:6006/#hparams hparams.png \
        --hparams z_dim,learning_rate,kl_schedule --metrics test_negative_elbo_nats,negative_iwae_nats

The dashboard ticks the first five hparams and metrics it finds; this ticks exactly the ones named, in headless
Chromium (Debian's `chromium`, WebGL in software) driven through its DevTools protocol over
--remote-debugging-pipe (commands on fd 3, replies on fd 4, NUL-terminated JSON), and saves the page as a PNG.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

WIDTH, HEIGHT = 1400, 800
# Every element under root matching selector, through the shadow roots of TensorBoard's Polymer elements.
DEEP = '''function deep(root, selector, found = []) {
  root.querySelectorAll(selector).forEach(e => found.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) deep(e.shadowRoot, selector, found); });
  return found;
}
'''


def devtools(flags):
    """Chromium started with flags, and send(method, session, **params) -> the result of one command."""
    commands, replies = os.pipe(), os.pipe()
    chrome = subprocess.Popen(['bash', '-c', f'exec chromium {" ".join(flags)} --remote-debugging-pipe '
                                             f'3<&{commands[0]} 4>&{replies[1]}'],
                              pass_fds=(commands[0], replies[1]), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(commands[0])
    os.close(replies[1])
    state = {'id': 0, 'buffer': b''}

    def send(method, session=None, **params):
        state['id'] += 1
        message = {'id': state['id'], 'method': method, 'params': params, **({'sessionId': session} if session
                                                                             else {})}
        os.write(commands[1], json.dumps(message).encode() + b'\0')
        while True:  # replies and events, until the reply to this command
            while b'\0' not in state['buffer']:
                chunk = os.read(replies[0], 1 << 20)
                if not chunk:
                    raise SystemExit('chromium closed its DevTools pipe')
                state['buffer'] += chunk
            line, state['buffer'] = state['buffer'].split(b'\0', 1)
            reply = json.loads(line)
            if reply.get('id') == state['id']:
                if 'error' in reply:
                    raise SystemExit(f'{method}: {reply["error"]}')
                return reply['result']
    return chrome, send


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('url')
    parser.add_argument('output')
    parser.add_argument('--hparams', required=True, help='hparam columns to show, comma-separated')
    parser.add_argument('--metrics', required=True, help='metric columns to show, comma-separated')
    args = parser.parse_args()
    profile = tempfile.mkdtemp()
    chrome, send = devtools(['--headless=new', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
                             '--no-sandbox', f'--user-data-dir={profile}', f'--window-size={WIDTH},{HEIGHT}'])
    try:
        target = send('Target.createTarget', url='about:blank')['targetId']
        session = send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        send('Emulation.setDeviceMetricsOverride', session, width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
             mobile=False)
        send('Page.navigate', session, url=args.url)

        def evaluate(expression):
            return send('Runtime.evaluate', session, expression=DEEP + expression,
                        returnByValue=True)['result'].get('value')
        metrics, hparams = args.metrics.split(','), args.hparams.split(',')
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the query pane lists the metrics
            if set(metrics) <= set(evaluate("deep(document, 'paper-checkbox.metric-checkbox')"
                                            ".map(e => e.textContent.trim())") or []):
                break
            time.sleep(2)
        else:
            raise SystemExit(f'the HParams dashboard at {args.url} lists no metrics {", ".join(metrics)}')
        # The query pane's column checkboxes (its value filters and status boxes stay as they are).
        evaluate(f'''for (const [kind, wanted] of [['hparam-checkbox', {json.dumps(hparams)}],
                                                  ['metric-checkbox', {json.dumps(metrics)}]]) {{
                       for (const box of deep(document, 'paper-checkbox.' + kind)) {{
                         if (box.checked !== wanted.includes(box.textContent.trim())) box.click();
                       }}
                     }}''')
        time.sleep(5)  # the table redraws
        with open(args.output, 'wb') as f:
            f.write(base64.b64decode(send('Page.captureScreenshot', session, format='png')['data']))
        send('Browser.close')
        chrome.wait(timeout=30)
    finally:
        if chrome.poll() is None:
            chrome.kill()
        shutil.rmtree(profile, ignore_errors=True)
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
