// English and Chinese. t(key, {vars}) fills {name} placeholders; the choice is kept in localStorage.
const STRINGS = {
  en: {
    'nav.data': 'Data', 'nav.new': 'New job', 'nav.jobs': 'Jobs', 'nav.playground': 'Playground', 'nav.models': 'Models',
    'signout': 'Sign out', 'copy': 'Copy',
    'signin.title': 'Sign in', 'signin.help': "Type the server's API key (mmtune serve --api-key). It stays in this tab only.",
    'signin.key': 'API key', 'signin.go': 'Sign in', 'signin.wrong': 'That key was not accepted: type the key the server was started with.',
    'data.title': 'Data', 'data.upload': 'Upload', 'data.choose': 'Choose a .jsonl or .json file first.', 'data.uploading': 'Uploading…',
    'data.files': 'Uploaded files', 'data.none': 'No file uploaded yet.', 'data.jobrules': 'what a job applies',
    'data.sev.all': 'all', 'data.sev.error': 'errors', 'data.sev.warning': 'warnings', 'data.error': 'error', 'data.warning': 'warning',
    'data.createjob': 'Create a job with this file', 'data.format': 'Format', 'data.kind': 'Kind', 'data.rows': 'Rows',
    'data.errors': 'Errors', 'data.warnings': 'Warnings', 'data.rules': 'Rules', 'data.severity': 'Show',
    'data.blocked': 'A job would fail: {n} error(s) under the {rules} rules. Fix the file and upload it again.',
    'data.truncated': 'Only the first {n} findings are listed (the counts are exact).',
    'data.col.line': 'Line', 'data.col.severity': 'Severity', 'data.col.field': 'Field', 'data.col.rule': 'Rule', 'data.col.message': 'Message and fix',
    'data.rawline': 'Line {n} as it is in the file', 'data.wholefile': 'This finding is about the whole file.',
    'job.title': 'New fine-tuning job', 'job.none': '(none)', 'job.presetvalues': 'Preset values: {v}. Empty fields take them.',
    'job.estimate': 'Estimate', 'job.create': 'Create job', 'job.creating': 'Creating…', 'job.nofiles': 'Upload a data file first (Data).',
    'job.method': 'Method', 'job.fits': 'Fits in free memory', 'job.steps': 'Steps', 'job.tokens': 'Tokens', 'job.time': 'Time',
    'job.notime': 'unknown until a job of this model has run here', 'job.cost': 'Estimated cost', 'job.free': 'Free memory',
    'job.filecheck': 'Training file',
    'job.f.model': 'Model', 'job.f.training_file': 'Training file', 'job.f.validation_file': 'Validation file', 'job.f.preset': 'Preset',
    'job.f.method': 'Method', 'job.f.suffix': 'Suffix', 'job.f.n_epochs': 'Epochs', 'job.f.batch_size': 'Batch size',
    'job.f.learning_rate_multiplier': 'LR multiplier', 'job.f.lora_rank': 'LoRA rank', 'job.f.lora_alpha': 'LoRA alpha',
    'job.f.lora_dropout': 'LoRA dropout', 'job.f.max_length': 'Max length', 'job.f.max_steps': 'Max steps', 'job.f.save_steps': 'Save every (steps)',
    'job.f.seed': 'Seed', 'job.code.cli': 'mmtune CLI', 'job.code.curl': 'curl', 'job.code.python': 'Python (openai)',
    'jobs.title': 'Jobs', 'jobs.none': 'No job yet.', 'jobs.col.id': 'Job', 'jobs.col.model': 'Model', 'jobs.col.status': 'Status',
    'jobs.col.queue': 'Queue', 'jobs.col.created': 'Created', 'jobs.col.result': 'Model / error',
    'job.chart': 'Loss and learning rate', 'job.trainloss': 'training loss', 'job.validloss': 'validation loss', 'job.lr': 'learning rate',
    'job.smoothing': 'Smoothing', 'job.checkpoints': 'Checkpoints', 'job.events': 'Events', 'job.log': 'Training log',
    'job.step': 'Step', 'job.eta': 'Time left', 'job.tps': 'Tokens/s', 'job.attempts': 'Attempts', 'job.cancel': 'Cancel job',
    'job.chat': 'Chat with this', 'job.resumed': 'Resumed after a server restart:',
    'status.validating_files': 'validating files', 'status.queued': 'queued', 'status.running': 'running',
    'status.succeeded': 'succeeded', 'status.failed': 'failed', 'status.cancelled': 'cancelled',
    'pg.title': 'Playground', 'pg.system': 'You are a helpful assistant.', 'pg.prompt': 'Ask something…', 'pg.systemlabel': 'System prompt',
    'pg.promptlabel': 'Prompt', 'pg.drop': 'Drop an image here (or choose one)', 'pg.attached': 'Image attached ({w}×{h})',
    'pg.clearimage': 'Remove image', 'pg.remove': 'Remove column', 'pg.send': 'Send to all', 'pg.add': 'Add column',
    'pg.waiting': 'waiting…', 'pg.streaming': '{n} pieces…',
    'pg.stats': '{tokens} tokens · first token {first} s · {total} s · {tps} tokens/s · {finish}',
    'models.title': 'Models', 'models.served': 'Served by this server', 'models.id': 'Model', 'models.job': 'Job', 'models.base': 'Base',
    'models.code': 'Code', 'models.registry': 'Registry (what a job may train)', 'models.basis': 'Memory to fine-tune: {b}.',
    'models.kind': 'Kind', 'models.accepts': 'Accepts', 'models.params': 'Parameters',
  },
  zh: {
    'nav.data': '数据', 'nav.new': '新建任务', 'nav.jobs': '任务', 'nav.playground': '对话测试', 'nav.models': '模型',
    'signout': '退出', 'copy': '复制',
    'signin.title': '登录', 'signin.help': '输入服务器的 API 密钥（mmtune serve --api-key）。密钥只保存在本标签页。',
    'signin.key': 'API 密钥', 'signin.go': '登录', 'signin.wrong': '密钥不正确：请输入启动服务器时使用的密钥。',
    'data.title': '数据', 'data.upload': '上传', 'data.choose': '请先选择 .jsonl 或 .json 文件。', 'data.uploading': '上传中…',
    'data.files': '已上传的文件', 'data.none': '尚未上传文件。', 'data.jobrules': '任务使用的规则',
    'data.sev.all': '全部', 'data.sev.error': '错误', 'data.sev.warning': '警告', 'data.error': '错误', 'data.warning': '警告',
    'data.createjob': '用此文件创建任务', 'data.format': '格式', 'data.kind': '类型', 'data.rows': '行数',
    'data.errors': '错误', 'data.warnings': '警告', 'data.rules': '规则', 'data.severity': '显示',
    'data.blocked': '任务会失败：在 {rules} 规则下有 {n} 个错误。请修正文件后重新上传。',
    'data.truncated': '只列出前 {n} 条问题（计数是准确的）。',
    'data.col.line': '行', 'data.col.severity': '级别', 'data.col.field': '字段', 'data.col.rule': '规则', 'data.col.message': '说明与修正方法',
    'data.rawline': '文件中的第 {n} 行原文', 'data.wholefile': '此问题针对整个文件。',
    'job.title': '新建微调任务', 'job.none': '（无）', 'job.presetvalues': '预设值：{v}。留空的字段使用预设值。',
    'job.estimate': '估算', 'job.create': '创建任务', 'job.creating': '创建中…', 'job.nofiles': '请先上传数据文件（数据）。',
    'job.method': '方法', 'job.fits': '可用内存是否足够', 'job.steps': '步数', 'job.tokens': 'Token 数', 'job.time': '时间',
    'job.notime': '此模型在本服务器上运行过一次任务后才能估算', 'job.cost': '预计费用', 'job.free': '可用内存',
    'job.filecheck': '训练文件',
    'job.f.model': '模型', 'job.f.training_file': '训练文件', 'job.f.validation_file': '验证文件', 'job.f.preset': '预设',
    'job.f.method': '方法', 'job.f.suffix': '后缀', 'job.f.n_epochs': '轮数', 'job.f.batch_size': '批大小',
    'job.f.learning_rate_multiplier': '学习率倍数', 'job.f.lora_rank': 'LoRA 秩', 'job.f.lora_alpha': 'LoRA alpha',
    'job.f.lora_dropout': 'LoRA dropout', 'job.f.max_length': '最大长度', 'job.f.max_steps': '最大步数', 'job.f.save_steps': '保存间隔（步）',
    'job.f.seed': '随机种子', 'job.code.cli': 'mmtune 命令行', 'job.code.curl': 'curl', 'job.code.python': 'Python（openai）',
    'jobs.title': '任务', 'jobs.none': '还没有任务。', 'jobs.col.id': '任务', 'jobs.col.model': '模型', 'jobs.col.status': '状态',
    'jobs.col.queue': '排队', 'jobs.col.created': '创建时间', 'jobs.col.result': '模型 / 错误',
    'job.chart': '损失与学习率', 'job.trainloss': '训练损失', 'job.validloss': '验证损失', 'job.lr': '学习率',
    'job.smoothing': '平滑', 'job.checkpoints': '检查点', 'job.events': '事件', 'job.log': '训练日志',
    'job.step': '步', 'job.eta': '剩余时间', 'job.tps': 'Token/秒', 'job.attempts': '尝试次数', 'job.cancel': '取消任务',
    'job.chat': '与它对话', 'job.resumed': '服务器重启后已恢复：',
    'status.validating_files': '校验文件', 'status.queued': '排队中', 'status.running': '运行中',
    'status.succeeded': '已成功', 'status.failed': '已失败', 'status.cancelled': '已取消',
    'pg.title': '对话测试', 'pg.system': '你是一个乐于助人的助手。', 'pg.prompt': '输入问题…', 'pg.systemlabel': '系统提示词',
    'pg.promptlabel': '提示词', 'pg.drop': '把图片拖到这里（或选择图片）', 'pg.attached': '已附加图片（{w}×{h}）',
    'pg.clearimage': '移除图片', 'pg.remove': '移除此列', 'pg.send': '全部发送', 'pg.add': '添加一列',
    'pg.waiting': '等待中…', 'pg.streaming': '已收到 {n} 段…',
    'pg.stats': '{tokens} 个 token · 首个 token {first} 秒 · 共 {total} 秒 · {tps} token/秒 · {finish}',
    'models.title': '模型', 'models.served': '本服务器提供的模型', 'models.id': '模型', 'models.job': '任务', 'models.base': '基座',
    'models.code': '代码', 'models.registry': '模型注册表（任务可训练的模型）', 'models.basis': '微调所需内存：{b}。',
    'models.kind': '类型', 'models.accepts': '输入', 'models.params': '参数量',
  },
};

export const lang = () => (localStorage.getItem('mmtune.lang') === 'zh' ? 'zh' : 'en');

export function t(key, vars = {}) {
  const text = STRINGS[lang()][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : `{${k}}`));
}

export function setLang(value) { localStorage.setItem('mmtune.lang', value); applyI18n(); }

export function applyI18n() {
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  const button = document.getElementById('lang');
  if (button) button.textContent = lang() === 'zh' ? 'English' : '中文';
}
