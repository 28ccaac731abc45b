"""Every user-facing string of the GUI, in English and Chinese. ``tr("key", **values)`` picks the current language."""

from __future__ import annotations

import locale
import os

LANGUAGES = {"en": "English", "zh": "中文"}

STRINGS: dict[str, dict[str, str]] = {
    "app_title": {"en": "Hearth", "zh": "Hearth"},
    "nav_chat": {"en": "Chat", "zh": "聊天"},
    "nav_settings": {"en": "Settings", "zh": "设置"},
    # chat list
    "new_chat": {"en": "New chat", "zh": "新建对话"},
    "search_chats": {"en": "Search chats", "zh": "搜索对话"},
    "untitled": {"en": "New conversation", "zh": "新对话"},
    "rename": {"en": "Rename", "zh": "重命名"},
    "delete": {"en": "Delete", "zh": "删除"},
    "rename_chat": {"en": "Rename conversation", "zh": "重命名对话"},
    "title": {"en": "Title", "zh": "标题"},
    "save": {"en": "Save", "zh": "保存"},
    "cancel": {"en": "Cancel", "zh": "取消"},
    "delete_chat_q": {"en": "Delete this conversation?", "zh": "删除这个对话？"},
    "delete_chat_body": {
        "en": "“{title}” and all its messages will be deleted. This cannot be undone.",
        "zh": "“{title}”及其所有消息将被删除，且无法恢复。",
    },
    "no_chats": {"en": "No conversations yet", "zh": "还没有对话"},
    # chat page
    "message_hint": {"en": "Message", "zh": "输入消息"},
    "send": {"en": "Send", "zh": "发送"},
    "stop": {"en": "Stop", "zh": "停止"},
    "regenerate": {"en": "Regenerate", "zh": "重新生成"},
    "copy": {"en": "Copy", "zh": "复制"},
    "copied": {"en": "Copied", "zh": "已复制"},
    "you": {"en": "You", "zh": "你"},
    "assistant": {"en": "Assistant", "zh": "助手"},
    "model": {"en": "Model", "zh": "模型"},
    "system_prompt": {"en": "System prompt", "zh": "系统提示词"},
    "system_prompt_hint": {
        "en": "Instructions for this conversation (optional)",
        "zh": "本对话的指令（可选）",
    },
    "stats": {"en": "{model} · {tokens} tokens · {speed:.1f} tokens/s", "zh": "{model} · {tokens} 个词元 · {speed:.1f} 词元/秒"},
    "stopped": {"en": "stopped", "zh": "已停止"},
    "trimmed": {
        "en": "{count} older messages were left out to fit the model's context",
        "zh": "为适应模型上下文，省略了 {count} 条较早的消息",
    },
    "model_loading": {"en": "Loading {model}…", "zh": "正在加载 {model}…"},
    "model_ready": {"en": "{model} ready", "zh": "{model} 已就绪"},
    "welcome": {
        "en": "Ask anything. Replies are generated on this computer; nothing leaves it.",
        "zh": "随便问吧。回复在本机生成，数据不会离开这台电脑。",
    },
    "error": {"en": "Error", "zh": "错误"},
    "dismiss": {"en": "Dismiss", "zh": "关闭"},
    "open_settings": {"en": "Open settings", "zh": "打开设置"},
    # settings
    "language": {"en": "Language", "zh": "语言"},
    "theme": {"en": "Theme", "zh": "主题"},
    "theme_system": {"en": "System", "zh": "跟随系统"},
    "theme_light": {"en": "Light", "zh": "浅色"},
    "theme_dark": {"en": "Dark", "zh": "深色"},
    "appearance": {"en": "Appearance", "zh": "外观"},
    "llm_settings": {"en": "Language model", "zh": "语言模型"},
    "provider": {"en": "Provider", "zh": "提供方"},
    "provider_local": {"en": "Local model", "zh": "本地模型"},
    "provider_remote": {"en": "OpenAI-compatible server", "zh": "OpenAI 兼容服务器"},
    "base_url": {"en": "Server URL", "zh": "服务器地址"},
    "remote_model": {"en": "Model name", "zh": "模型名称"},
    "api_key": {"en": "API key (stored in the OS keyring)", "zh": "API 密钥（保存在系统钥匙串中）"},
    "api_key_saved": {"en": "A key is saved; leave empty to keep it", "zh": "已保存密钥；留空则保持不变"},
    "test_connection": {"en": "Test connection", "zh": "测试连接"},
    "save_config": {"en": "Save and use", "zh": "保存并使用"},
    "saved": {"en": "Saved: the chat now uses {model}", "zh": "已保存：聊天现在使用 {model}"},
    "use_model": {"en": "Use", "zh": "使用"},
    "in_use": {"en": "In use", "zh": "使用中"},
    "local_models": {"en": "Local models", "zh": "本地模型"},
    "download": {"en": "Download", "zh": "下载"},
    "pause": {"en": "Pause", "zh": "暂停"},
    "resume": {"en": "Resume", "zh": "继续"},
    "verify": {"en": "Verify", "zh": "校验"},
    "verified_ok": {"en": "{model}: every file matches its checksum", "zh": "{model}：所有文件校验通过"},
    "verified_bad": {"en": "{model}: corrupt files removed: {files}", "zh": "{model}：已删除损坏的文件：{files}"},
    "delete_model_q": {"en": "Delete {model}?", "zh": "删除 {model}？"},
    "delete_model_body": {"en": "Its files ({size}) will be removed from disk.", "zh": "将从磁盘删除其文件（{size}）。"},
    "status_embedded": {"en": "Built in", "zh": "内置"},
    "status_not_downloaded": {"en": "Not downloaded", "zh": "未下载"},
    "status_partial": {"en": "Paused at {percent}%", "zh": "已暂停 {percent}%"},
    "status_downloading": {"en": "Downloading {percent}%", "zh": "下载中 {percent}%"},
    "status_ready": {"en": "Downloaded", "zh": "已下载"},
    "status_corrupt": {"en": "Corrupt: download again to repair", "zh": "文件损坏：请重新下载修复"},
    "progress": {
        "en": "{done} of {total} · {speed}/s · {eta} left · via {endpoint}",
        "zh": "{done} / {total} · {speed}/秒 · 剩余 {eta} · 来源 {endpoint}",
    },
    "mirrors": {"en": "Download sources (in order)", "zh": "下载源（按顺序）"},
    "add_mirror": {"en": "Add source URL", "zh": "添加下载源地址"},
    "check_mirrors": {"en": "Check", "zh": "检测"},
    "healthy": {"en": "OK {ms} ms", "zh": "可用 {ms} 毫秒"},
    "unhealthy": {"en": "Unreachable: {detail}", "zh": "不可用：{detail}"},
    "move_up": {"en": "Move up", "zh": "上移"},
    "remove": {"en": "Remove", "zh": "移除"},
    "reset_defaults": {"en": "Restore defaults", "zh": "恢复默认"},
    "connection_ok": {"en": "✓ {detail}", "zh": "✓ 连接成功：{detail}"},
    # agent company
    "build_started": {"en": "The company is working on: {task}", "zh": "软件公司开始工作：{task}"},
    "build_summary": {"en": "Project ready", "zh": "项目完成"},
    "build_cancelled": {"en": "Stopped: the project so far is kept", "zh": "已停止：已完成的部分保留在项目中"},
    "open_folder": {"en": "Open folder", "zh": "打开文件夹"},
    "view_manual": {"en": "View manual", "zh": "查看手册"},
    "no_manual": {"en": "This run wrote no manual.", "zh": "本次运行没有生成手册。"},
    "unsandboxed_title": {"en": "Run generated code without a sandbox?", "zh": "在没有沙箱的情况下运行生成的代码？"},
    "unsandboxed_body": {
        "en": "No sandbox can start on this computer, so the programs this build writes would run with your "
        "permissions: they could read your files (SSH keys, tokens, documents), change them and use the network. "
        "Only time, memory, file-size and process limits would apply. Run it anyway?",
        "zh": "这台电脑上无法启动沙箱，因此本次构建生成的程序将以你的权限运行：它们可以读取你的文件（SSH 密钥、令牌、文档）、"
        "修改它们并访问网络。只有时间、内存、文件大小和进程数量限制会生效。仍然运行吗？",
    },
    "weak_sandbox_body": {
        "en": "Only a partial sandbox can start on this computer (an older kernel): the programs this build writes "
        "could not read your files or use the network, but they could stop Hearth and your other programs. Run it "
        "anyway?",
        "zh": "这台电脑上只能启动不完整的沙箱（内核较旧）：本次构建生成的程序无法读取你的文件或访问网络，"
        "但可以终止 Hearth 和你的其他程序。仍然运行吗？",
    },
    "unsandboxed_remember": {"en": "Don't ask again on this computer", "zh": "在这台电脑上不再询问"},
    "unsandboxed_run": {"en": "Run without a sandbox", "zh": "不使用沙箱运行"},
    "reviewer_hint": {"en": "Your review comments (type end to finish)", "zh": "你的审查意见（输入 end 结束）"},
    "build_usage": {
        "en": "Usage: /build [--config Default|Human|AutoCoder] what to build  (and /replay RUN_FOLDER to replay a run)",
        "zh": "用法：/build [--config Default|Human|AutoCoder] 要构建的程序（/replay 运行文件夹 可回放一次运行）",
    },
    "code_change": {"en": "Code change: {path}", "zh": "代码变更：{path}"},
    "engine": {"en": "Engine", "zh": "推理引擎"},
    "engine_auto": {"en": "Engine: automatic", "zh": "引擎：自动"},
    # local OpenAI-compatible server
    "server_section": {"en": "Local API server (OpenAI-compatible)", "zh": "本地 API 服务（兼容 OpenAI）"},
    "server_switch": {"en": "Serve local models on this computer", "zh": "在本机提供本地模型服务"},
    "server_port": {"en": "Port", "zh": "端口"},
    "server_starting": {"en": "Starting...", "zh": "正在启动……"},
    "server_running": {
        "en": "Serving at {url} (this computer only; use python main.py serve --host with an API key for others)",
        "zh": "服务地址：{url}（仅本机；如需局域网访问，请使用 python main.py serve --host 并设置 API 密钥）",
    },
    "server_stopped": {"en": "Not serving", "zh": "未运行"},
    "server_bad_port": {"en": "The port must be a number, e.g. 8765", "zh": "端口必须是数字，例如 8765"},
    # evolution simulation
    "evolve_started": {
        "en": "Evolution: {agents} agents, {generations} generations of {steps} steps, world {size}x{size}",
        "zh": "进化模拟：{agents} 个智能体，{generations} 代，每代 {steps} 步，世界 {size}x{size}",
    },
    "evolve_loading": {"en": "Loading the model and the agents' adapters...", "zh": "正在加载模型和智能体的适配器……"},
    "evolve_progress": {
        "en": "Generation {generation}/{generations}, step {step}/{steps}, best fitness {best}",
        "zh": "第 {generation}/{generations} 代，第 {step}/{steps} 步，最佳适应度 {best}",
    },
    "evolve_summary": {"en": "Evolution finished", "zh": "进化完成"},
    "evolve_cancelled": {
        "en": "Evolution stopped: finished generations are saved (resume with python main.py evolve --resume)",
        "zh": "进化已停止：已完成的代已保存（可用 python main.py evolve --resume 继续）",
    },
    "evolve_usage": {
        "en": "Usage: /evolve [N agents] [G generations] [S steps] [size W] [seed X], e.g. /evolve 20 agents 10 generations",
        "zh": "用法：/evolve [N agents] [G generations] [S steps] [size W] [seed X]，例如 /evolve 20 agents 10 generations",
    },
    "desktop_fallback": {
        "en": "The desktop window could not start ({reason}); Hearth opened in your browser instead.",
        "zh": "无法启动桌面窗口（{reason}），Hearth 已改为在浏览器中打开。",
    },
    # Errors (src/errors.py): HearthError.message_key, filled from the error's fields. The CLI and logs stay English.
    "error_empty_message": {"en": "The message is empty. Type something to send.", "zh": "消息为空。请输入内容后再发送。"},
    "error_nothing_to_regenerate": {
        "en": "There is no message to answer again in this conversation yet.", "zh": "这个对话中还没有可以重新回答的消息。",
    },
    "error_context_overflow": {
        "en": "The message is too long for this model: it needs {needed} tokens but the model accepts {limit}. "
        "Shorten the message or choose a model with a longer context.",
        "zh": "消息对这个模型来说太长：需要 {needed} 个词元，但模型只接受 {limit} 个。请缩短消息，或选择上下文更长的模型。",
    },
    "error_unknown_model": {"en": "Unknown model “{model}”.", "zh": "未知模型“{model}”。"},
    "error_model_not_downloaded": {
        "en": "Model “{model_id}” is not downloaded. Download it in the settings.",
        "zh": "模型“{model_id}”尚未下载。请在设置中下载。",
    },
    "error_engine_stopped": {
        "en": "Hearth is shutting down; the local model has been unloaded and cannot answer any more.",
        "zh": "Hearth 正在退出；本地模型已卸载，无法再回答。",
    },
    "error_keyring_unavailable": {
        "en": "No OS keyring is available to store the API key securely. Hearth never writes API keys to plain "
        "files. Unlock or install a keyring service (GNOME Keyring / KWallet, macOS Keychain, Windows Credential "
        "Manager), or pass the key for this session only in the HEARTH_API_KEY environment variable.",
        "zh": "没有可用的系统密钥环来安全保存 API 密钥，Hearth 从不把 API 密钥写入普通文件。请解锁或安装密钥环服务"
        "（GNOME Keyring / KWallet、macOS 钥匙串、Windows 凭据管理器），或仅在本次会话中通过 HEARTH_API_KEY 环境变量提供密钥。",
    },
    "error_server_unreachable": {
        "en": "Cannot reach the server at {base_url} ({detail}). Is it running, and is the URL right?",
        "zh": "无法连接到服务器 {base_url}（{detail}）。服务器是否在运行？网址是否正确？",
    },
    "error_server_timeout": {
        "en": "The server at {base_url} did not answer within {seconds:g} s. Try again or check the server.",
        "zh": "服务器 {base_url} 在 {seconds:g} 秒内没有响应。请重试或检查服务器。",
    },
    "error_authentication": {
        "en": "The server at {base_url} rejected the API key (401). Check the key in the LLM settings.",
        "zh": "服务器 {base_url} 拒绝了 API 密钥（401）。请在语言模型设置中检查密钥。",
    },
    "error_remote_model_not_found": {
        "en": "The server at {base_url} has no model named “{model}”. Check the model name (for Ollama: ollama list).",
        "zh": "服务器 {base_url} 上没有名为“{model}”的模型。请检查模型名称（Ollama 可用 ollama list 查看）。",
    },
    "error_repo_not_found": {
        "en": "Repository “{repo}” (revision “{revision}”) was not found on {endpoint}. Check the name.",
        "zh": "在 {endpoint} 上找不到仓库“{repo}”（版本“{revision}”）。请检查名称。",
    },
    "error_gated_repo": {
        "en": "Repository “{repo}” on {endpoint} needs permission ({status}): accept its license on the Hub and set a "
        "token in HF_TOKEN (it is only ever sent to huggingface.co).",
        "zh": "{endpoint} 上的仓库“{repo}”需要权限（{status}）：请在 Hub 上接受其许可，并在 HF_TOKEN 中设置令牌"
        "（令牌只会发送给 huggingface.co）。",
    },
    "error_no_healthy_endpoint": {
        "en": "No download source answered. Check the network, or add a mirror to the download sources.",
        "zh": "没有任何下载源应答。请检查网络，或在下载源列表中添加镜像。",
    },
    "error_file_download_failed": {
        "en": "Downloading “{path}” from {endpoint} failed after {attempts} attempts: {cause}. Download again to "
        "resume where it stopped.",
        "zh": "从 {endpoint} 下载“{path}”失败（已尝试 {attempts} 次）：{cause}。再次下载即可从中断处继续。",
    },
    "error_checksum_mismatch": {
        "en": "“{path}” is corrupt even after downloading it again. The source may serve a bad copy: try another.",
        "zh": "“{path}”重新下载后仍然损坏。该下载源可能提供了错误的副本：请换一个下载源。",
    },
    "error_download_in_progress": {
        "en": "Model “{model_id}” is already being downloaded (by this or another Hearth).",
        "zh": "模型“{model_id}”已在下载中（由本程序或另一个 Hearth 进程）。",
    },
    "error_file_restart_limit": {
        "en": "{endpoint} kept answering with something that does not continue “{file}”, and no other source could "
        "take over. Remove it from the download sources or put another one first, then download again to resume.",
        "zh": "{endpoint} 的回应始终无法接续“{file}”，也没有其他下载源可以接替。请从下载源中移除它或把其他源排在前面，"
        "然后再次下载以继续。",
    },
    "error_listing_refused": {
        "en": "The file list of “{repo}” from {endpoint} was refused: the source may be broken or hostile. Remove it "
        "from the download sources or put another one first.",
        "zh": "来自 {endpoint} 的“{repo}”文件列表被拒绝：该下载源可能有故障或不可信。请从下载源中移除它或把其他源排在前面。",
    },
}


def translate_error(error: BaseException, language: str) -> str:
    """``error`` in ``language``: a HearthError by its ``message_key`` and fields; in English, or without a
    translation, its own message; any other exception (a bug) as its type and message."""
    from src.errors import HearthError

    if not isinstance(error, HearthError):
        return f"{type(error).__name__}: {error}"
    entry = STRINGS.get(error.message_key)
    if language == "en" or entry is None or language not in entry:
        return str(error)  # the error's own English is the complete one (the "en" entries are the reference)
    try:
        return entry[language].format(**error.fields)
    except (KeyError, IndexError, ValueError):  # a field the sentence needs is missing: the English is complete
        return str(error)


def default_language() -> str:
    """Chinese when the system locale is Chinese, else English."""
    for value in (os.environ.get("LC_ALL"), os.environ.get("LC_MESSAGES"), os.environ.get("LANG")):
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    try:
        code = locale.getlocale()[0] or ""
    except ValueError:
        code = ""
    return "zh" if code.lower().startswith("zh") else "en"


class Translator:
    def __init__(self, language: str | None = None) -> None:
        self.language = language if language in LANGUAGES else default_language()

    def __call__(self, key: str, **values: object) -> str:
        entry = STRINGS.get(key)
        if entry is None:
            return key
        text = entry.get(self.language) or entry["en"]
        return text.format(**values) if values else text
