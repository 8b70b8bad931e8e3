"""Real stand-in devices for the device tests.

* ``sshd``: a real OpenSSH server on 127.0.0.1 with throw-away keys
  (the "SSH device"), optionally chrooting one user into the arm64 root.
* ``arm64_root``: an arm64 Debian root (mmdebstrap) with numpy and
  tflite-runtime, run through qemu-user-static + binfmt_misc (the
  "emulated Raspberry Pi").
* ``fake_adbd``: the phone side of the adb transport protocol, executing
  shell commands inside the arm64 root, driven by Debian's real ``adb``.
* ``fake_benchmark_model``: a stand-in for TFLite's ``benchmark_model`` that
  runs on the device's python3 and prints the real tool's output format.
* ``fixtures``: the pytest fixtures that start all of the above.

Nothing here talks to any address but 127.0.0.1.
"""
