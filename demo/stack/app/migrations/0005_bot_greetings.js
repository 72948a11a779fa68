'use strict';
// v3: the bot's greetings per language, in Redis: data outside the database that a rollback has to take
// back with it.
const GREETINGS = {
  en: 'Hello! This is the deployctl seed stack.',
  de: 'Hallo! Hier ist der deployctl-Seed-Stack.',
  fr: 'Bonjour ! Ici la pile de démarrage de deployctl.',
};

async function up({redis}) {
  await redis.hSet('bot:greetings', GREETINGS);
}

module.exports = {up};
